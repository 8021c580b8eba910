"""What a real Metaflow run with `--datastore s3` leaves in the bucket (the facts docs/s3.md
states, so a Metaflow upgrade that changes them fails here first)."""

from __future__ import annotations

import json

from s3fixtures import S3Endpoint, S3Run


def task_keys(s3_server: S3Endpoint, run: S3Run, step: str) -> dict[str, str]:
    """name -> key of every object in the task folder of the run's only `step` task."""
    run_prefix = f"{run.prefix}{run.flow}/{run.run_id}/{step}/"
    keys = s3_server.keys(run_prefix)
    assert keys, run_prefix
    return {key.rsplit("/", 1)[1]: key for key in keys}


def read_json(s3_server: S3Endpoint, key: str) -> object:
    body = s3_server.client().get_object(Bucket=s3_server.bucket, Key=key)["Body"].read()
    return json.loads(body)


def test_task_folder_holds_status_files_and_logs_but_no_meta(
    s3_server: S3Endpoint, s3_card_run: S3Run
) -> None:
    names = task_keys(s3_server, s3_card_run, "start")
    assert set(names) == {
        "0.attempt.json", "0.task_begin", "0.task_end", "0.DONE.lock", "0.runtime", "0.data.json",
        "0.runtime_stdout.log", "0.runtime_stderr.log",
    }
    assert not [key for key in s3_server.keys(s3_card_run.prefix) if "/_meta/" in key]
    assert set(read_json(s3_server, names["0.attempt.json"])) == {"time"}  # type: ignore[arg-type]
    assert read_json(s3_server, names["0.runtime"]) == {"return_code": 0, "killed": False, "success": True}
    assert read_json(s3_server, names["0.task_end"]) == {}
    # The run's metadata is local: it lands in the working folder, never in the bucket
    assert (s3_card_run.workdir / ".metaflow" / s3_card_run.flow / s3_card_run.run_id / "_meta").is_dir()


def test_cards_sit_under_sysroot_mf_cards_in_the_local_layout(
    s3_server: S3Endpoint, s3_card_run: S3Run
) -> None:
    task = f"{s3_card_run.prefix}mf.cards/{s3_card_run.flow}/runs/{s3_card_run.run_id}/steps/start/tasks/1/"
    keys = [key.removeprefix(task) for key in s3_server.keys(task)]
    assert len(keys) == 2, keys
    card = next(key for key in keys if key.startswith("cards/"))
    update = next(key for key in keys if key.startswith("runtime/"))
    assert card.startswith("cards/blank-") and card.endswith(".html")
    assert update == "runtime/" + card.removeprefix("cards/").removesuffix(".html") + ".data.json"
    final = read_json(s3_server, task + update)
    assert isinstance(final, dict) and final["reload_token"] == "final"
    assert "# update 2" in json.dumps(final["data"])


def test_card_s3root_puts_cards_apart_from_the_datastore(s3_server: S3Endpoint, s3_failed_run: S3Run) -> None:
    run = s3_failed_run
    cards = s3_server.keys(f"elsewhere/cards/{run.flow}/runs/{run.run_id}/steps/start/tasks/1/")
    # The card is rendered even though its step failed (its one data update may or may not land
    # first: Metaflow drops a refresh whose card subprocess is still running)
    assert any(key.endswith(".html") and "/cards/blank-" in key for key in cards), cards
    assert not s3_server.keys(f"{run.prefix}mf.cards/")
    assert s3_server.keys(f"{run.prefix}{run.flow}/{run.run_id}/start/1/0.runtime")
