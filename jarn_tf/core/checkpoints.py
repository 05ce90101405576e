"""Checkpoints of a run: which exist, newest first, and restoring the newest that can be read.

Shared by the training loop (``jarn_tf.core.loop``) and the modes that start from
another run's checkpoint (``advgan_finetune``), so that neither imports the
other.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from typing import List, Optional

import tensorflow as tf

CHECKPOINT_DIR = "checkpoints"


class CheckpointRestoreError(ValueError):
    """The run's checkpoints exist but none can be restored; none was deleted."""


# What restoring a damaged checkpoint raises: IndexError ("Read less bytes
# than requested": a truncated data file) or an OpError (DataLossError for a
# failed checksum, NotFoundError for a missing file, a bad index file...).
UNREADABLE_CHECKPOINT_ERRORS = (IndexError, tf.errors.OpError)


def one_line(error: BaseException) -> str:
    """``Type: first line of the message``, without TensorFlow's op-name prefix."""
    text = (str(error).strip().splitlines() or [""])[0]
    text = re.sub(r"^\{\{[^}]*\}\}\s*", "", text)  # "{{function_node ...}} "
    return f"{type(error).__name__}: {text}"


def checkpoint_number(path: str) -> int:
    match = re.search(r"-(\d+)$", path)
    return int(match.group(1)) if match else -1


def checkpoint_candidates(directory: str) -> List[str]:
    """The checkpoints of ``directory``, newest (highest number) first.

    Those the state file (``checkpoint``) lists and those whose ``.index``
    file is there: TensorFlow ignores an unreadable state file with a mere
    warning, and the run must not then start again from step 0.

    Args:
      directory: a CheckpointManager's directory (it need not exist).

    Returns:
      Checkpoint paths (prefixes such as ``.../ckpt-20``).
    """
    paths = []
    state = tf.train.get_checkpoint_state(directory)
    if state is not None:
        paths.extend(state.all_model_checkpoint_paths)
        paths.append(state.model_checkpoint_path)
    paths.extend(p[: -len(".index")] for p in glob.glob(os.path.join(glob.escape(directory), "*.index")))
    unique = dict.fromkeys(os.path.abspath(p) for p in paths if p)  # keeps the first of each
    return sorted(unique, key=checkpoint_number, reverse=True)


def restore_newest_readable(
    checkpoint: tf.train.Checkpoint, directory: str, expect_partial: bool = False
) -> Optional[str]:
    """Restores the newest checkpoint of ``directory`` that can be read.

    A damaged checkpoint (truncated, failing its checksum, a file missing) is
    skipped with a warning naming it and the reason, and the one before it is
    tried; nothing is deleted. A restore after a failed one leaves no value of
    the damaged checkpoint behind: ``assert_existing_objects_matched`` checks
    that it assigned every variable.

    Args:
      checkpoint: the checkpoint of every network, optimizer and the step.
      directory: the directory of the checkpoints.
      expect_partial: the checkpoint may hold more than ``checkpoint``
        (e.g. a fine-tuning run reads a co-training run's networks but not
        its optimizers); every object of ``checkpoint`` must still be in it.

    Returns:
      The path of the checkpoint restored, or None when there is none.

    Raises:
      CheckpointRestoreError: there are checkpoints but none can be read, or
        one does not match the networks; the message names them and the fix.
    """
    skipped = []
    for path in checkpoint_candidates(directory):
        try:
            status = checkpoint.restore(path).assert_existing_objects_matched()
            if expect_partial:
                status.expect_partial()
        except UNREADABLE_CHECKPOINT_ERRORS as e:
            logging.warning("Skipped checkpoint %s: it cannot be read (%s).", path, one_line(e))
            skipped.append(f"{os.path.basename(path)}: {one_line(e)}")
            continue
        except (AssertionError, ValueError) as e:  # an object missing, or a variable of another shape
            raise CheckpointRestoreError(
                f"Checkpoint {path} does not match the networks of this configuration ({one_line(e)}). "
                "Use a new --model_dir."
            ) from e
        if skipped:
            logging.warning("Resuming from %s, the newest checkpoint that can be read.", path)
        return path
    if skipped:
        raise CheckpointRestoreError(
            f"No checkpoint in {directory} can be read ({'; '.join(skipped)}). Nothing was deleted. To train "
            f"this run again from step 0, move {directory} away; or use a new --model_dir."
        )
    return None
