"""Extracting the `.gz` archives of an IDX dataset, checked by their content rather than by their bytes."""

import gzip
import zlib
from pathlib import Path

from torchvision.datasets.utils import check_integrity

from ae_lightning.data.idx import idx_dims
from ae_lightning.errors import DataError
from ae_lightning.files import atomic_write

#: the image size of every dataset of the MNIST family
IMAGE_SIZE = (28, 28)


def extract_archives(raw: Path, resources: list[tuple[str, str]]) -> list[str]:
    """Extracts each `X.gz` of `resources` ((file name, md5) pairs) found in `raw` whose `X` is missing.

    An archive is accepted by what it holds, not by its bytes: it must decompress to IDX data of unsigned
    bytes of the right dimensions (images of 28x28, or labels). One whose bytes differ from torchvision's
    (`md5`), as a mirror or a distribution that compressed the files again makes them, is used all the
    same; the names of those are returned, for a notice. A truncated or foreign archive is a DataError
    naming it. The extracted file is written whole or not at all.
    """
    recompressed = []
    for name, md5 in resources:
        archive, target = raw / name, raw / name.removesuffix(".gz")
        if target.is_file() or not archive.is_file():
            continue
        remedy = f"replace {archive.name} with the original archive (or delete it to download it again)"
        try:
            data = gzip.decompress(archive.read_bytes())
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(
                f"{archive} is not a readable gzip archive ({' '.join(str(err).split())}): {remedy}"
            ) from err
        ndim = 3 if "-images-" in name else 1
        dims = idx_dims(data[:16], len(data), ndim, f"{archive} (decompressed)", remedy)
        if ndim == 3 and dims[1:] != IMAGE_SIZE:
            raise DataError(f"{archive} holds {dims[1]}x{dims[2]} images, expected 28x28: {remedy}")
        with atomic_write(target) as file:
            file.write(data)
        if not check_integrity(str(archive), md5):
            recompressed.append(archive.name)
    return recompressed
