"""`zoo`: list, inspect, convert and push the zoo's models from the shell.

Exit codes: 0 success, 1 a source could not be loaded or converted (one line on stderr),
2 a usage error.
"""

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EPILOG = """\
sources (IN, NAME_OR_PATH):
  hf-hub:ORG/NAME[@REV]   a Hub repository written by `zoo push` or timm
  local-dir:PATH, PATH/   a folder written by `zoo convert` / zoo.save_pretrained
  FILE --arch NAME        a .safetensors/.pth/.pt/.bin/.ckpt state_dict (torchvision, timm)
  TAG --arch NAME         torchvision's checkpoint: DEFAULT, IMAGENET1K_V1, ...

examples:
  zoo list 'resnet*'
  zoo info resnet18
  zoo convert resnet18-f37072fd.pth exported/ --arch resnet18
  zoo convert hf-hub:org/model model.safetensors
  zoo push exported/ org/model --private
"""


class CLIError(Exception):
    """A failure reported as one line on stderr, exit code 1."""


class UsageError(CLIError):
    """Arguments that do not fit together: exit code 2, as argparse's own errors."""


def _count(minimum: int, meaning: str):
    """An argparse type: a whole number >= `minimum` (a usage error, exit 2, otherwise)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum} ({meaning}), got {value}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zoo",
        description="torchvision's models in JAX/Equinox: list, inspect, convert, push.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("list", help="list the registered architectures")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'resnet*'")

    p = commands.add_parser("info", help="architecture, parameter count and config")
    p.add_argument("source", metavar="NAME_OR_PATH", help="a registry name or a source")
    p.add_argument("--arch", help="architecture of a weights file")

    p = commands.add_parser(
        "convert",
        help="convert weights to an exported folder or a .safetensors file",
        description="Read IN (any supported source) and write OUT: a folder (model.safetensors, "
        "config.json, README.md; see zoo.save_pretrained) or, if OUT ends in .safetensors, "
        "that file alone (torchvision's keys).",
    )
    p.add_argument("input", metavar="IN", help="source to read (see 'zoo --help')")
    p.add_argument("output", metavar="OUT", help="folder, or a .safetensors file")
    p.add_argument("--arch", help="architecture, needed for a weights file or a torchvision tag")
    p.add_argument(
        "--num-classes",
        type=_count(0, "0 for no classifier"),
        help="re-initialise the head to this many classes (0: none)",
    )
    p.add_argument(
        "--in-chans",
        type=_count(1, "the images' channels"),
        help="adapt the first conv to this many channels",
    )
    p.add_argument("--labels", type=Path, help="text file with one class name per line")
    p.add_argument("--license", help="license for the model card (e.g. apache-2.0)")
    p.add_argument("--repo-id", help="repository named in the model card's usage snippet")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing OUT, if it is an export (or a .safetensors file)",
    )

    p = commands.add_parser("push", help="upload an exported folder to the Hugging Face Hub")
    p.add_argument("folder", metavar="FOLDER", help="folder written by 'zoo convert'")
    p.add_argument("repo_id", metavar="REPO_ID", help="ORG/NAME (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", help="branch to commit to (default: main)")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead")
    p.add_argument("--message", default="Upload model exported by equizoo", help="commit message")
    p.add_argument("--token", help="Hub token (default: HF_TOKEN or the saved login)")
    return parser


def _is_source(text: str) -> bool:
    return text.startswith(("hf-hub:", "local-dir:"))


def _load(source: str, arch: str | None, **kwargs: Any) -> tuple[Any, str]:
    """The Equinox model of any source, and its registry name."""
    import zoo

    if not _is_source(source) and Path(source).is_dir():
        source = f"local-dir:{source}"
    if _is_source(source):
        if arch is not None:
            raise UsageError(f"{source} names its own architecture; drop --arch")
        model = zoo.load(source, framework="jax", **kwargs)
        return model.model, model.name
    if arch is None:
        raise UsageError(
            f"{source}: pass --arch NAME to say which architecture these weights are for "
            "(`zoo list` shows the names)"
        )
    return zoo.load(arch, framework="equinox", weights=source, **kwargs), arch


def _cmd_list(args: argparse.Namespace) -> None:
    import zoo

    names = zoo.list_models(args.pattern)
    if not names:
        raise CLIError(f"no architecture matches {args.pattern!r}; `zoo list` shows them all")
    print("\n".join(names))


def _cmd_info(args: argparse.Namespace) -> None:

    import weights_convert as wc
    import zoo
    from zoo.hub import build_config

    source = args.source
    # A name that is no path describes the architecture at its defaults (no weights to read).
    registered = args.arch is None and not _is_source(source) and not Path(source).exists()
    if registered:
        model, name = zoo.load(source, framework="equinox"), source
    else:
        model, name = _load(source, args.arch)
    state_dict = wc.to_state_dict(model, copy=False)
    params = sum(t.numel() for k, t in state_dict.items() if not wc.is_buffer_name(k))
    config = build_config(name, model)
    print(f"architecture: {name}")
    print(f"source:       {'registry (fresh initialisation)' if registered else source}")
    print(f"parameters:   {params:,}")
    print(f"tensors:      {len(state_dict)} in the state_dict")
    info = zoo.get_model_info(name)
    if info.torchvision_weights is not None:
        tags = ", ".join(info.weight_tags())
        print(f"weights:      DEFAULT, {tags} ({info.torchvision_weights}, downloaded on use)")
    maps = ", ".join(f"{f.module} ({f.num_chs} ch, /{f.reduction})" for f in model.feature_info)
    print(f"features:     {maps}")
    print("config:")
    print(json.dumps({k: v for k, v in config.items() if k != "zoo"}, indent=2))


def _write_safetensors(model: Any, path: Path, overwrite: bool) -> None:
    import weights_convert as wc
    from zoo.hub import write_weights_file

    # Same rules as save_pretrained: staged aside and renamed into place, ordinary
    # permissions, non-finite weights refused, only a safetensors file replaced.
    write_weights_file(wc.to_state_dict(model, copy=False), path, overwrite=overwrite)


def _cmd_convert(args: argparse.Namespace) -> None:
    import zoo

    kwargs = {"num_classes": args.num_classes, "in_chans": args.in_chans}
    model, name = _load(args.input, args.arch, **{k: v for k, v in kwargs.items() if v is not None})
    out = Path(args.output)
    if out.suffix == ".safetensors":
        _write_safetensors(model, out, args.overwrite)
    else:
        labels = None
        if args.labels is not None:
            try:
                text = args.labels.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise UsageError(f"--labels {args.labels}: cannot read it ({e})") from e
            labels = [line.strip() for line in text.splitlines()]
            labels = [label for label in labels if label]
        zoo.save_pretrained(
            model,
            out,
            name=name,
            label_names=labels,
            license=args.license,
            repo_id=args.repo_id,
            overwrite=args.overwrite,
        )
    print(f"wrote {out} ({name})")


def _cmd_push(args: argparse.Namespace) -> None:
    import zoo

    info = zoo.push_to_hub(
        Path(args.folder),
        args.repo_id,
        private=args.private,
        revision=args.revision,
        create_pr=args.create_pr,
        commit_message=args.message,
        token=args.token,
    )
    print(getattr(info, "pr_url", None) or getattr(info, "commit_url", None) or info)


COMMANDS = {"list": _cmd_list, "info": _cmd_info, "convert": _cmd_convert, "push": _cmd_push}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `zoo` command line with `argv` (default `sys.argv[1:]`); returns the exit code.

    **Arguments:**

    - `argv`: the arguments after the program name.

    **Returns:** 0 on success, 1 when a source cannot be loaded, converted or pushed, 2 on a
    usage error.
    """
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse exits on --help (0) and on usage errors (2)
        return int(e.code or 0)
    try:
        COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("zoo: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        # Load and convert errors carry the file and the fix: show them, not a traceback.
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"zoo {args.command}: error: {' '.join(str(message).split())}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
