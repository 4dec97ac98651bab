"""Artifacts that survive moving the workspace: `mlflow-artifacts:` URIs, read from mlartifacts/ beside the sqlite file.

MLflow stores each run's artifact location in the database as it was when the experiment was created, and it
turns a relative `file:` location into an absolute one, so a workspace tracked into `file:///old/path/mlartifacts`
loses its artifacts when moved. `mlflow ui` (an `mlflow server` serving artifacts) instead gives new experiments
`mlflow-artifacts:/<experiment id>`, which it resolves against its `--artifacts-destination`, `./mlartifacts` in the
folder it starts in. The default store uses the same locations, so `mlflow ui` in the workspace, wherever it has
moved, finds them.

A process that talks to the sqlite file directly (every stage, `mlflow.pyfunc.load_model` with a `sqlite:` tracking
URI) has no server to resolve them through: MLflow's own repository refuses any tracking URI but http(s). This one,
registered for the `mlflow-artifacts` scheme (as an `mlflow.artifact_repository` plugin in pyproject.toml, and by
`tracking.connect`), reads and writes `mlartifacts/` beside the sqlite file, exactly where `mlflow ui` started
there serves them from, and hands every other case to MLflow's repository unchanged.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from mlflow.store.artifact.artifact_repo import ArtifactRepository
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

from burrscope.files import atomic_path

SCHEME = "mlflow-artifacts"
# What `mlflow ui` gives a new experiment (mlflow.store.tracking.DEFAULT_ARTIFACTS_URI), followed by its id.
DEFAULT_ARTIFACT_ROOT = f"{SCHEME}:/"
ARTIFACTS_DIR = "mlartifacts"  # `mlflow ui`'s default --artifacts-destination, relative to where it starts


def sqlite_file(tracking_uri: str | None) -> Path | None:
    """The database file of a `sqlite:` tracking URI (relative to the working directory if the URI is); else None."""
    parts = urlsplit(tracking_uri or "")
    if parts.scheme != "sqlite" or len(parts.path) < 2:  # not sqlite, or sqlite:// (in memory)
        return None
    # sqlite:///relative.db and sqlite:////absolute.db: the path is what follows the third slash.
    return Path(unquote(parts.path[1:]))


def local_destination(artifact_uri: str, tracking_uri: str | None) -> Path | None:
    """Where a hostless `mlflow-artifacts:/...` URI lives under a sqlite store: mlartifacts/ beside the file."""
    parts = urlsplit(artifact_uri)
    database = sqlite_file(tracking_uri)
    if parts.netloc or database is None:  # a URI naming its server, or a store behind one: only a server resolves it
        return None
    return database.parent / ARTIFACTS_DIR / unquote(parts.path).lstrip("/")


def repository(
    artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None
) -> ArtifactRepository:
    """The `mlflow-artifacts` repository: local files under a sqlite store, MLflow's proxy client otherwise."""
    if tracking_uri is None:  # some MLflow paths (loading a registered model) pass none: use the process's own
        from mlflow.tracking import get_tracking_uri

        tracking_uri = get_tracking_uri()
    destination = local_destination(artifact_uri, tracking_uri)
    if destination is None:
        return MlflowArtifactsRepository(artifact_uri, tracking_uri=tracking_uri, registry_uri=registry_uri)
    return LocalArtifactRepository(destination.resolve().as_uri(), tracking_uri=tracking_uri, registry_uri=registry_uri)


def create_store(database: Path) -> None:
    """Create a new sqlite store at `database` as `mlflow ui` would: with its Default experiment's artifacts at
    `mlflow-artifacts:/0`. A plain MlflowClient would record its own working directory's absolute ./mlruns there.

    MLflow creates the tables through dozens of migrations, seconds in all; a process killed meanwhile would leave a
    half-made file that every later run fails to open ("table ... already exists"). So the store is made under a
    temp name and renamed into place whole: a kill leaves no store, and the next run creates it.
    """
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    with atomic_path(database) as tmp:
        SqlAlchemyStore(f"sqlite:///{tmp}", DEFAULT_ARTIFACT_ROOT).engine.dispose()


def register() -> None:
    """Make this process resolve `mlflow-artifacts:` with `repository`, in case the plugin entry point is not
    installed (a checkout used without `pip install -e .`)."""
    from mlflow.store.artifact.artifact_repository_registry import _artifact_repository_registry

    _artifact_repository_registry.register(SCHEME, repository)
