"""A run directory's config.yaml against the digest its run.json records, `config_digest`: a config.yaml cut short at
a line end (a full disk, an interrupted copy) still parses, and was read with defaults for the options it lost.

Every write of run.json (`rundir.write_info`) records config.yaml's sha256 and size as they are then, and every write
of config.yaml (`rundir.write_config`) records them in run.json, so the two agree wherever tunelab wrote them. Before
a command reads the config (`rundir.read_config`), `check_config` compares them; a run written before the digest was
recorded has none, and is read unchecked. A config.yaml edited on purpose is accepted by writing its new digest, which
the error gives, into run.json.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tunelab.errors import RunDirError

FIELD = "config_digest"  # run.json's key (rundir.RunInfo's field)


def yaml_digest(config: Path) -> dict[str, Any]:
    """{"sha256": hex, "bytes": size} of the file `config`; empty when there is none."""
    try:
        data = config.read_bytes()
    except FileNotFoundError:
        return {}
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def check_config(config: Path, run_json: Path) -> None:
    """RunDirError when `config` is not the config.yaml whose digest `run_json` records, naming both files, what
    differs and how to go on. Nothing recorded (an older run, no run.json, a damaged one: read_info says so): no
    check."""
    try:
        recorded = json.loads(run_json.read_text(encoding="utf-8")).get(FIELD)
    except (OSError, ValueError, AttributeError):
        return
    if not isinstance(recorded, dict) or not isinstance(recorded.get("sha256"), str):
        return
    now = yaml_digest(config)
    if now.get("sha256") == recorded["sha256"]:
        return
    size = recorded.get("bytes")
    if not isinstance(size, int) or size == now["bytes"]:
        what = f"its content differs (sha256 {now['sha256'][:12]}..., recorded {recorded['sha256'][:12]}...)"
    elif now["bytes"] < size:
        what = f"it has {now['bytes']:,} bytes of the {size:,} recorded: it was cut short, or options were removed"
    else:
        what = f"it has {now['bytes']:,} bytes, {size:,} recorded: it was edited"
    raise RunDirError(
        f"{config}: not the config.yaml the run wrote ({what}; {run_json} records its digest). Read as it is, the "
        "options it lacks would take their defaults, not the values the run trained with. Put back the run's own "
        "config.yaml (a copy or backup of the run holds it); if you edited it on purpose, accept it by setting "
        f'"{FIELD}" in {run_json} to {json.dumps(now)}.'
    )
