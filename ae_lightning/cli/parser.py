"""The CLI's argument parser: LightningCLI's, with option prefixes refused and every parse error told in at
most three lines (what is wrong, the closest valid names, what to do) instead of the usage and jsonargparse's
nested report."""

import difflib
import importlib
import inspect
import os
import re
import sys
import typing
from collections.abc import Iterable
from typing import Any, NoReturn

from lightning.pytorch.cli import LightningArgumentParser

from ae_lightning.lazy import import_object

#: lines of jsonargparse's report that only frame the problem
_FRAME = re.compile(
    r"^(- )?(Does not validate against any of the Union subtypes|Subtypes: .*|Errors:|Given value type: .*|"
    r"Given value: .*|Expected a <class 'NoneType'>|Expected a path but .* either not accessible or invalid|"
    r"Parser key \".*\":)$"
)


class ArgumentParser(LightningArgumentParser):
    """LightningArgumentParser that refuses abbreviated options (`--trainer.max_epoch` is not taken for
    `--trainer.max_epochs`) and prints a parse error as one `error:` line and one `tip:` line on stderr,
    then exits with status 2, as argparse does. `--help` still prints the full usage.

    `classes` maps a key (`model`, `data`) to the classes that key takes, for the error of an unknown class;
    `siblings` are the other parsers of the CLI (the subcommands'), whose options are suggested as well.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.classes: dict[str, list[str]] = {}
        self.siblings: list[ArgumentParser] = []

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        # jsonargparse calls this with exit_on_error off while it tries alternatives: it must raise then
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        if not isinstance(parser, ArgumentParser):
            parser = self
        sys.stderr.write(parser.short_error(message) + "\n")
        sys.exit(2)

    def option_names(self) -> list[str]:
        """Every option of this parser and its siblings, as typed: `--trainer.max_epochs`, ..."""
        names = {
            option
            for parser in (self, *self.siblings)
            for action in parser._actions
            for option in action.option_strings
            if option.startswith("--")
        }
        return sorted(names)

    def short_error(self, message: str) -> str:
        """The two lines that replace jsonargparse's report of a parse error."""
        return "\n".join(_explain(message, self))


def _explain(message: str, parser: ArgumentParser) -> list[str]:
    """The error and tip lines for jsonargparse's `message`: an unknown option, an unknown class or a bad
    value, each with the names closest to what was given; else the report's own words, on one line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    keys = [key for line in lines for key in re.findall(r'Parser key "([^"]+)"', line)]
    key = ".".join(dict.fromkeys(keys))  # nested keys: "model", then "optimizer" -> "model.optimizer"
    prog = parser.prog.replace(" [options]", "")
    prog = f"python {prog}" if prog.split(" ", 1)[0].endswith(".py") else prog
    tip = f"tip: `{prog} --help` lists every option"
    explained = (
        _unknown_option(message, key, parser, prog)
        or _unknown_class(message, key, parser)
        or _bad_value(message, key)
    )
    if explained is not None:
        return [f"error: {explained[0]}", f"tip: {explained[1]}" if explained[1] else tip]
    detail = " ".join(re.sub(r'Parser key "[^"]+": ?', "", line) for line in lines if not _FRAME.match(line))
    return [f"error: {(f'--{key}: ' if key else '') + (detail.strip() or message)}"[:400], tip]


def _unknown_option(message: str, key: str, parser: ArgumentParser, prog: str) -> tuple[str, str] | None:
    """(error, tip) for an option no class or group takes; None if that is not the problem."""
    class_paths = re.findall(r"class_path[ =]'([^']+)'", message)
    unknown = re.search(r"Option '([^']+)' is not accepted|No action for key \"([^\"]+)\"", message)
    option = unknown and (unknown[1] or unknown[2])
    if option and class_paths:  # an argument of the class picked for `key`
        cls = class_paths[-1]
        where = f"--{key}.{option}" if key else f"--{option}"
        hint = _closest(option, _arguments_of(cls))
        help_tip = f"`{prog} --{key}.help {cls}` lists its arguments" if key in parser.classes else ""
        return f"{where}: {cls} takes no argument {option!r}{hint}", help_tip
    group = re.search(r"(Group|Subcommand) '([^']+)' does not accept option '([^']+)'", message)
    unrecognized = re.search(r"Unrecognized arguments: (\S+)", message, re.IGNORECASE)
    if group:
        option = f"--{group[2]}.{group[3]}" if group[1] == "Group" else f"--{group[3]}"
    elif unrecognized:
        option = unrecognized[1].split("=", 1)[0]
    elif option:
        option = f"--{option}"
    else:
        return None
    return f"unknown option {option}{_closest_option(option, parser)}", ""


def _unknown_class(message: str, key: str, parser: ArgumentParser) -> tuple[str, str] | None:
    """(error, tip) for a class path that names no class; None if that is not the problem."""
    missing_attribute = re.search(r"module '([\w.]+)' has no attribute '(\w+)'", message)
    missing_module = re.search(r"No module named '([\w.]+)'", message)
    not_a_path = re.search(r"Expected a dot import path string: (\S+)", message)
    class_paths = re.findall(r"class_path[ =]'([^']+)'", message)
    if missing_attribute:
        given = f"{missing_attribute[1]}.{missing_attribute[2]}"
    elif not_a_path:
        given = not_a_path[1]
    elif missing_module:
        given = class_paths[-1] if class_paths else missing_module[1]
    else:
        return None
    choices = parser.classes.get(key) or _classes_in(given.rpartition(".")[0])
    hint = _closest(given, choices, by_name=True)
    if not hint and missing_module:
        hint = f" (there is no module {missing_module[1]})"
    modules = {choice.rpartition(".")[0] for choice in choices}
    if choices and len(modules) == 1:  # one module's classes (the models): their names, after the module's
        names = ", ".join(choice.rpartition(".")[2] for choice in choices)
        return f"--{key}: no class {given}{hint}", f"--{key} takes a class of {modules.pop()}: {names}"
    if choices and len(choices) <= 12:
        return f"--{key}: no class {given}{hint}", f"--{key} takes one of {', '.join(choices)}"
    return f"--{key}: no class {given}{hint}", "give the full import path of the class (package.module.Class)"


def _bad_value(message: str, key: str) -> tuple[str, str] | None:
    """(error, tip) for a value of the wrong type or not among the allowed; None if that is not it."""
    expected = re.findall(r"Expected an? (.+?)(?:\. Got value: .*)?$", message, re.MULTILINE)
    given = re.search(r"(?:Given value|Got value): (.*)$", message, re.MULTILINE)
    if not (key and expected and given):
        return None
    kinds = [_readable(kind) for kind in expected if "NoneType" not in kind]
    literals = [kind for kind in kinds if kind.startswith("'") or kind[:1].isdigit()]
    others = [kind for kind in kinds if kind not in literals]
    what = " or ".join([*others, *([f"one of {', '.join(literals)}"] if literals else [])]) or "another value"
    return f"--{key}: {given[1].strip()} is not valid here, expected {what}", ""


def _closest(word: str, choices: Iterable[str], by_name: bool = False) -> str:
    """'; did you mean X?' for the choice closest to `word` (comparing class names when `by_name`)."""
    choices = list(choices)
    if by_name:
        names = {choice.rpartition(".")[2]: choice for choice in choices}
        match = difflib.get_close_matches(word.rpartition(".")[2], list(names), n=1, cutoff=0.6)
        return f"; did you mean {names[match[0]]}?" if match else ""
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {match[0]}?" if match else ""


def _closest_option(option: str, parser: ArgumentParser) -> str:
    """'; did you mean --x.y?' among the options of the same group, else among all options, else among the
    first parts of the options (`--modle.init_args.latent_dim` -> `--model`)."""
    names = parser.option_names()
    group = option.rpartition(".")[0]
    same_group = [name for name in names if name.rpartition(".")[0] == group] if group else []
    heads = sorted({name.split(".", 1)[0] for name in names})
    return _closest(option, same_group) or _closest(option, names) or _closest(option.split(".", 1)[0], heads)


def _arguments_of(class_path: str) -> list[str]:
    """The keyword arguments of the class at `class_path` (empty when it cannot be imported)."""
    cls = import_object(class_path)
    return _init_arguments(cls) if isinstance(cls, type) else []


def _init_arguments(cls: type) -> list[str]:
    """The keyword arguments of `cls`, those its `**kwargs` pass to its bases included, and for a module that
    builds a torch model from the rest (`build_autoencoder`, by its return type) that model's."""
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        try:
            parameters = inspect.signature(vars(klass)["__init__"]).parameters.values()
        except (TypeError, ValueError):
            break
        names += [
            p.name for p in parameters if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    build = next((vars(k)["build_autoencoder"] for k in cls.__mro__ if "build_autoencoder" in vars(k)), None)
    built = typing.get_type_hints(build).get("return") if build is not None else None
    if isinstance(built, type):
        names += _init_arguments(built)
    return names


def _classes_in(module_name: str) -> list[str]:
    """The public classes of a module, as import paths (empty when there is no such module)."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return []
    return [
        f"{module_name}.{name}"
        for name, value in vars(module).items()
        if inspect.isclass(value) and not name.startswith("_")
    ]


def _readable(kind: str) -> str:
    """jsonargparse's name of a type, for people: "<class 'int'>" -> "int", a Literal -> its values."""
    literal = re.fullmatch(r"typing\.Literal\[(.*)\]", kind)
    if literal:
        return literal[1]
    plain = re.fullmatch(r"<class '(?:builtins\.)?([\w.]+)'>", kind)
    return plain[1] if plain else kind
