"""The platform's exceptions: one hierarchy, each error with a one-line hint of what to do.

Everything the platform raises for a condition its user can act on (bad configuration,
bad or missing input, no model to serve, output that fails its checks) is a
:class:`RecsysError`. The CLI prints such an error as ``recsys: <message>`` and
``hint: <hint>``, without a traceback; any other exception is a bug and keeps its traceback.

Errors that callers used to catch as a builtin (``FileNotFoundError``, ``ValueError``,
``RuntimeError``) subclass that builtin too, so existing ``except`` clauses still work.
"""

from __future__ import annotations


class RecsysError(Exception):
    """An error the user can act on; ``hint`` says how, in one line."""

    hint: str = "see the message above"

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint
        # Shown under the message wherever a traceback is printed (Airflow task logs, --debug).
        self.add_note(f"hint: {self.hint}")


class ConfigError(RecsysError, ValueError):
    """The configuration cannot work; the message names each bad key."""

    hint = "fix the keys named above in the YAML file (RECSYS_CONFIG) or in their RECSYS_<SECTION>__<KEY> variables"


class ConfigFileMissing(ConfigError, FileNotFoundError):
    """RECSYS_CONFIG names a file that does not exist."""

    hint = "unset RECSYS_CONFIG or point it to a YAML file such as config/recsys.yaml"


class DataError(RecsysError):
    """Input data is bad or missing; the message names the file, partition or record."""

    hint = "fix or re-deliver the input named above, then rerun the stage"


class MissingInput(DataError, FileNotFoundError):
    """An input a stage reads (landing folder, partition, snapshot, ingest) is not there."""

    hint = "run the stage that produces it first, or pick a date that has it"


class ModelError(RecsysError):
    """A model cannot be trained, loaded or scored as configured."""

    hint = "check the training log above; retrain with `recsys train --date D` if the model is stale"


class RegistryError(ModelError):
    """The model registry lacks what a stage needs (e.g. no champion to serve)."""

    hint = "train and register a model first: `recsys train --date D` (or the recsys_train DAG)"


class PublishError(RecsysError):
    """A table about to be published fails its checks; nothing was published."""

    hint = "nothing was published; fix the cause named above and rerun the stage"
