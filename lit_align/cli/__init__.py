"""`lit_align <command>`: fit | validate | test | predict (LitAlignCLI, lightning_cli.py), export (export.py), steer
(cli/steer.py) and score (cli/score.py). Each command's errors reach the user as one paragraph (exit 2); a run
stopped by a signal or a SLURM preemption ends with its own exit status.
"""

from __future__ import annotations

import os
import sys

from lit_align.callbacks.collective_timeout import collective_timeout
from lit_align.callbacks.stops import Interrupted, Requeued
from lit_align.errors import LitAlignError, exception_chain, write_error, write_error_sentence
from lit_align.lightning_cli import LitAlignCLI, NothingToDo  # noqa: F401 (LitAlignCLI: tests, scripts)
from lit_align.resume import RUN_SETTINGS, checkpoint_meta


def checkpoint_data_config(argv: list[str]):
    """`validate / test / predict --ckpt_path FILE` without --config: the run's data settings (its validation sets,
    tokenization) come from the checkpoint (RunCheckpoint stores them), as a config file read before the command
    line's options, which override it. Returns that temporary file (None: nothing to add)."""
    import tempfile

    import yaml

    if argv[:1] not in (["validate"], ["test"], ["predict"]) or any(a in ("-c", "--config") or a.startswith("--config=")
                                                                    for a in argv):
        return None
    given = [a.split("=", 1)[1] if "=" in a else nxt for a, nxt in zip(argv, [*argv[1:], ""])
             if a == "--ckpt_path" or a.startswith("--ckpt_path=")]
    if not given or not os.path.isfile(given[-1]):
        return None
    ckpt = checkpoint_meta(given[-1]) or {}
    data = (ckpt.get(RUN_SETTINGS) or {}).get("data")
    if not data:
        return None
    out = tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="lit_align-checkpoint-data-", delete=False)
    with out:
        yaml.safe_dump({"data": data}, out)
    print(f"lit_align: the data settings of the checkpoint's run ({data.get('class_path', 'data')}: its validation "
          "sets and tokenization); --data.init_args.* options override them", file=sys.stderr, flush=True)
    return out


def _lit_align_error(exc: BaseException) -> LitAlignError | None:
    """The LitAlignError behind `exc`, if any: jsonargparse wraps the errors of the classes it instantiates
    ("Does not validate against any of the Union subtypes ...") with the original as the cause."""
    return next((e for e in exception_chain(exc) if isinstance(e, LitAlignError)), None)


def _one_paragraph(message: str) -> str:
    return " ".join(message.split())


def main(args=None) -> None:
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["export"]:  # `lit_align export CKPT OUT_DIR [--merge-lora]` (lit_align/cli/export.py)
        from lit_align.cli.export import main as export_main

        return export_main(argv[1:])
    if argv[:1] == ["score"]:  # `lit_align score --model M --data FILE --out OUT` (lit_align/cli/score.py)
        from lit_align.cli.score import main as score_main

        return score_main(argv[1:])
    if argv[:1] == ["steer"]:  # `lit_align steer --config X.yaml` (lit_align/cli/steer.py)
        from lit_align.cli.steer import main as steer_main

        return steer_main(argv[1:])
    settings = checkpoint_data_config(argv)
    if settings is not None:
        args = [argv[0], "--config", settings.name, *argv[1:]]
    try:
        LitAlignCLI(args=args)
    except Requeued as e:  # SLURM preemption (callbacks/requeue.py): checkpoint written, job requeued
        print(f"\nlit_align: {e}", file=sys.stderr, flush=True)
        sys.exit(0)
    except NothingToDo as e:
        print(f"\nlit_align: {_one_paragraph(str(e))}", file=sys.stderr, flush=True)
        sys.exit(0)
    except Interrupted as e:  # SIGTERM / SIGINT (callbacks/requeue.py): the step finished, last.ckpt written
        if e.rank_zero:
            print(f"\nlit_align: {e}", file=sys.stderr, flush=True)
        sys.exit(128 + e.signum)
    except Exception as e:
        timed_out = collective_timeout(e)
        if timed_out:
            print(f"\nlit_align: error: {timed_out}", file=sys.stderr, flush=True)
            sys.exit(1)
        error = _lit_align_error(e)
        disk = write_error(e) if error is None else None
        if disk is not None:  # a read-only or full disk, no permission: where, and what to do
            error = LitAlignError(write_error_sentence(disk))
        if error is None:
            from lightning.fabric.utilities.exceptions import MisconfigurationException

            if not isinstance(e, MisconfigurationException):
                raise
            error = e  # Lightning's word on a trainer option the checks above do not cover
        print(f"\nlit_align: error: {_one_paragraph(str(error))}", file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        if settings is not None:
            os.unlink(settings.name)
    import torch.distributed as dist

    # a finished multi-process run ends its process group here: left to interpreter exit, its threads could be torn
    # down mid-use (the rare "terminate called without an active exception" at the end of an FSDP2 run)
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
