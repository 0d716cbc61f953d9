"""`emeval models list` and `emeval models pull NAME`."""

from __future__ import annotations

from emeval.models import KNOWN_MODELS, pull


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list or fetch the known (embedded) models")
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    sub.add_parser("list", help="list known model names").set_defaults(func=list_models)
    pull_parser = sub.add_parser("pull", help="convert a known model once; print its local path")
    pull_parser.add_argument("name", choices=sorted(KNOWN_MODELS))
    pull_parser.set_defaults(func=pull_model)


def list_models(args) -> int:
    for model in KNOWN_MODELS.values():
        print(f"{model.name}\t{model.description}")
    return 0


def pull_model(args) -> int:
    print(pull(args.name))
    return 0
