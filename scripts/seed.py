"""Fill a Prefect server with realistic state for prefect-dr tests and benchmarks.

Run through the wrapper, against a stack started with scripts/stack:

    eval "$(scripts/stack env)"
    scripts/seed                      # objects + a few finished flow runs
    scripts/seed --history-gb 2.5     # ...and grow run history to ~2.5 GB of database

Everything goes through Prefect's own client (PREFECT_API_URL) except the history growth, which
inserts whole synthetic runs of dr-deployment (flow_run, task_run, their state rows, log, events,
event_resources) directly with psycopg (PREFECT_DR_DATABASE_URL, PGPASSWORD), in batches, until
pg_database_size reaches the target.
Idempotent: objects that exist are kept (or updated in place), and only the flow runs missing to
reach --flow-runs completed seeded runs are executed. Progress goes to stderr; the last line on
stdout is a one-line summary.
"""

import argparse
import asyncio
import os
import sys
import time
from typing import Any

from prefect import flow, get_run_logger, tags, task
from prefect.blocks.core import Block
from pydantic import BaseModel, Field, SecretStr

SEED_TAG = "dr-seed"
FLOW_NAME = "dr-flow"
DEPLOYMENT_NAME = "dr-deployment"
POOL_NAME = "dr-pool"
EXTRA_QUEUE = "dr-extra-queue"
AUTOMATION_NAME = "dr-automation"
GCL_NAME = "dr-gcl"
SECRET_VALUE = "s3cr3t-dr-seed-value"  # a well-known test value
VARIABLES: dict[str, Any] = {
    "dr_string": "hello",
    "dr_number": 42,
    "dr_object": {"a": [1, 2], "b": {"c": True}},
    "dr_list": [1, "two", 3.0],
}


def say(msg: str) -> None:
    print(f"seed: {msg}", file=sys.stderr, flush=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--history-gb",
        type=float,
        default=0.0,
        metavar="N",
        help="grow run history (events, event_resources, log) until the database is about N GB"
        " (default: off)",
    )
    p.add_argument(
        "--flow-runs",
        type=int,
        default=3,
        metavar="N",
        help="ensure at least N completed seeded runs of dr-flow exist (default: 3)",
    )
    p.add_argument(
        "--batch-runs",
        type=int,
        default=1000,
        help="max synthetic runs per INSERT batch during history growth, each with 2 task runs"
        " and ~90 log lines (default: 1000)",
    )
    return p.parse_args()


class WarehouseConnection(BaseModel):
    """Nested model inside the custom block."""

    host: str = "warehouse.internal.example"
    port: int = 5439
    database: str = "analytics"
    options: dict[str, str] = Field(default_factory=dict)


class WarehouseConfig(Block):
    """A custom block type with nested fields and a secret, saved as `dr-warehouse`."""

    _block_type_name = "DR Warehouse Config"
    _block_type_slug = "dr-warehouse-config"
    _description = "Warehouse settings seeded by prefect-dr's scripts/seed."

    connection: WarehouseConnection = Field(default_factory=WarehouseConnection)
    username: str = "loader"
    password: SecretStr
    schemas: list[str] = Field(default_factory=list)
    retries: int = 3


# --- objects through the client ------------------------------------------------------------


async def seed_objects() -> dict[str, Any]:
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import (
        DeploymentScheduleCreate,
        VariableCreate,
        VariableUpdate,
        WorkPoolCreate,
    )
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.events.actions import PauseDeployment
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    out: dict[str, Any] = {}
    async with get_client() as client:
        # Blocks: a built-in Secret and our custom nested block (overwrite keeps it idempotent).
        await Secret(value=SECRET_VALUE).asave("dr-secret", overwrite=True)
        await WarehouseConfig(
            connection=WarehouseConnection(
                options={"sslmode": "require", "application_name": "dr"}
            ),
            password=SecretStr("warehouse-pa55"),
            schemas=["raw", "staging", "marts"],
        ).asave("dr-warehouse", overwrite=True)
        say("blocks dr-secret and dr-warehouse saved")

        # Variables of several JSON types: create, or update when the value differs.
        for name, value in VARIABLES.items():
            existing = await client.read_variable_by_name(name)
            if existing is None:
                await client.create_variable(
                    VariableCreate(name=name, value=value, tags=[SEED_TAG])
                )
            elif existing.value != value:
                await client.update_variable(VariableUpdate(name=name, value=value))
        say(f"variables {', '.join(VARIABLES)} present")

        # Work pool (process type, with the worker's real default job template) + extra queue.
        try:
            await client.create_work_pool(
                WorkPoolCreate(
                    name=POOL_NAME,
                    type="process",
                    description="prefect-dr seed pool",
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                    concurrency_limit=10,
                )
            )
            say(f"work pool {POOL_NAME} created")
        except ObjectAlreadyExists:
            say(f"work pool {POOL_NAME} exists")
        try:
            await client.create_work_queue(
                name=EXTRA_QUEUE,
                work_pool_name=POOL_NAME,
                description="second queue",
                priority=2,
                concurrency_limit=3,
            )
            say(f"work queue {EXTRA_QUEUE} created")
        except ObjectAlreadyExists:
            say(f"work queue {EXTRA_QUEUE} exists")

        # Flow + deployment with an hourly cron schedule (skip if it exists: re-posting would
        # upsert and churn its schedules).
        flow_id = await client.create_flow_from_name(FLOW_NAME)
        try:
            dep = await client.read_deployment_by_name(f"{FLOW_NAME}/{DEPLOYMENT_NAME}")
            deployment_id = dep.id
            say(f"deployment {DEPLOYMENT_NAME} exists")
        except ObjectNotFound:
            deployment_id = await client.create_deployment(
                flow_id=flow_id,
                name=DEPLOYMENT_NAME,
                work_pool_name=POOL_NAME,
                work_queue_name="default",
                schedules=[
                    DeploymentScheduleCreate(
                        schedule=CronSchedule(cron="0 * * * *", timezone="UTC")
                    )
                ],
                parameters={"size": 5},
                parameter_openapi_schema={
                    "type": "object",
                    "title": "Parameters",
                    "properties": {"size": {"type": "integer", "title": "size", "default": 3}},
                },
                entrypoint="scripts/seed.py:dr_flow",
                path=".",
                tags=[SEED_TAG],
                description="Seeded by prefect-dr scripts/seed",
                job_variables={"env": {"DR_SEEDED": "1"}},
            )
            say(f"deployment {DEPLOYMENT_NAME} created")
        out["deployment_id"] = deployment_id

        # Automation: pause the deployment when one of its flow runs fails.
        if await client.read_automations_by_name(AUTOMATION_NAME):
            say(f"automation {AUTOMATION_NAME} exists")
        else:
            await client.create_automation(
                AutomationCore(
                    name=AUTOMATION_NAME,
                    description="Pause dr-deployment when a run fails",
                    trigger=EventTrigger(
                        expect={"prefect.flow-run.Failed"},
                        match_related={
                            "prefect.resource.id": f"prefect.deployment.{deployment_id}"
                        },
                        posture=Posture.Reactive,
                        threshold=1,
                    ),
                    actions=[PauseDeployment(source="selected", deployment_id=deployment_id)],
                )
            )
            say(f"automation {AUTOMATION_NAME} created")

        # Global concurrency limit (upsert: creates, or fixes the limit if it drifted).
        await client.upsert_global_concurrency_limit_by_name(GCL_NAME, limit=5)
        say(f"global concurrency limit {GCL_NAME} present")
    return out


# --- finished flow runs ----------------------------------------------------------------------


@task(name="dr-extract", retries=1)
def extract(size: int) -> list[int]:
    logger = get_run_logger()
    rows = [i * i for i in range(size)]
    logger.info("extracted %d rows from source partition p%03d", len(rows), size)
    return rows


@task(name="dr-transform")
def transform(rows: list[int]) -> int:
    logger = get_run_logger()
    total = sum(rows)
    logger.info("transformed %d rows, checksum=%d", len(rows), total)
    logger.warning("sample warning: %d rows had nulls (seeded)", len(rows) // 3)
    return total


@flow(name=FLOW_NAME, log_prints=True)
def dr_flow(size: int = 3) -> int:
    logger = get_run_logger()
    logger.info("starting dr-flow with size=%d", size)
    total = transform(extract(size))
    print(f"dr-flow done: total={total}")
    return total


async def completed_seed_runs() -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType

    async with get_client() as client:
        return await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[SEED_TAG]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED])),
            ),
        )


def run_flows(n: int) -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for i in range(n):
        with tags(SEED_TAG):
            state = dr_flow(size=3 + i, return_state=True)
        if not state.is_completed():
            raise SystemExit(f"seed: flow run ended {state.type.value}: {state.message}")
    # Logs and events (task run states travel as events) are sent in background batches:
    # drain both before we check the server.
    APILogWorker.drain_all(timeout=30)
    EventsWorker.drain_all(timeout=30)


async def wait_for_history(min_runs: int, timeout: float = 60.0) -> dict[str, int]:
    """Wait until the server has recorded the task runs and logs of the seeded runs
    (task runs are written asynchronously by the server's task-run recorder)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.client.schemas.objects import StateType

    deadline = time.monotonic() + timeout
    while True:
        runs = await completed_seed_runs()
        ids = [r.id for r in runs]
        async with get_client() as client:
            task_runs = (
                await client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids))
                )
                if ids
                else []
            )
            logs = (
                await client.read_logs(
                    log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)), limit=200
                )
                if ids
                else []
            )
        done_tasks = [t for t in task_runs if t.state_type == StateType.COMPLETED]
        counts = {"flow_runs": len(runs), "task_runs": len(done_tasks), "logs": len(logs)}
        # Every seeded run has 2 task runs and ~9 log lines (read_logs returns at most 200).
        if (
            len(runs) >= min_runs
            and len(done_tasks) >= 2 * len(runs)
            and len(logs) >= min(200, 5 * len(runs))
        ):
            return counts
        if time.monotonic() > deadline:
            raise SystemExit(
                f"seed: server did not record the seeded history in {timeout:.0f}s: {counts}"
            )
        await asyncio.sleep(0.5)


# --- history growth (direct SQL) -------------------------------------------------------------

# History growth inserts whole synthetic runs of dr-deployment, the way the server stores them:
# flow_run + 3 flow_run_state rows (Pending, Running, Completed/Failed), 2 task_run + 3
# task_run_state rows each, 2 * LOGS_PER_TASK + FLOW_LOGS log lines per run, one event per state
# change (task-run events carry the task run and its state details, as Prefect's do) and a
# flow-run heartbeat event per 30 s of run time, each with its event_resources rows (the
# primary resource and one per related resource). Runs are spread over the last 6 days, inside
# the server's events retention window (7 days by default; its db_vacuum service deletes older
# events), so every run has its events: as on a busy real server, most of the bytes are in
# events, event_resources and log (about 40%, 35% and 19% of the database; the runs and their
# states about 6%). Text is varied (md5/hash based) so it compresses like real logs rather than
# like identical strings. Literal percent signs are doubled for psycopg.
LOGS_PER_TASK = 26
FLOW_LOGS = 12
HISTORY_SQL = """
WITH runs AS MATERIALIZED (
  SELECT g,
         gen_random_uuid() AS id,
         gen_random_uuid() AS sid,
         'history-' || substr(md5(g::text || %(salt)s), 1, 12) AS name,
         now() - make_interval(
           secs => (hashtext(g::text || %(salt)s) & 2147483647) %% (6 * 86400 - 3600)) AS t0,
         make_interval(secs => 5 + (hashtext(%(salt)s || g::text) & 1023)) AS dur,
         (CASE WHEN g %% 20 = 0 THEN 'FAILED' ELSE 'COMPLETED' END)::state_type AS st
  FROM generate_series(1, %(runs)s) AS g
),
tasks AS MATERIALIZED (
  SELECT r.id AS fid, r.name AS fname, r.g, j,
         gen_random_uuid() AS id,
         gen_random_uuid() AS sid,
         (ARRAY['dr-extract', 'dr-transform'])[j] || '-' || substr(md5(r.id::text || j), 1, 3)
           AS name,
         r.t0 + r.dur * (j - 1) / 2 AS ts,
         r.dur / 2 AS dur,
         (CASE WHEN r.st = 'FAILED' AND j = 2 THEN 'FAILED' ELSE 'COMPLETED' END)::state_type AS st
  FROM runs r CROSS JOIN generate_series(1, 2) AS j
),
fstates AS MATERIALIZED (
  SELECT CASE WHEN k = 3 THEN r.sid ELSE gen_random_uuid() END AS id,
         r.id AS run_id, r.name AS run_name, r.g, k,
         (ARRAY['PENDING', 'RUNNING', r.st::text])[k] AS st,
         (ARRAY['SCHEDULED', 'PENDING', 'RUNNING'])[k] AS prev,
         r.t0 + (ARRAY[interval '-1 second', interval '0', r.dur])[k] AS ts
  FROM runs r CROSS JOIN generate_series(1, 3) AS k
),
tstates AS MATERIALIZED (
  SELECT CASE WHEN k = 3 THEN t.sid ELSE gen_random_uuid() END AS id,
         t.id AS task_id, t.name AS task_name, t.fid, t.fname, t.g, k,
         (ARRAY['PENDING', 'RUNNING', t.st::text])[k] AS st,
         (ARRAY['SCHEDULED', 'PENDING', 'RUNNING'])[k] AS prev,
         t.ts + (ARRAY[interval '-10 milliseconds', interval '0', t.dur])[k] AS ts
  FROM tasks t CROSS JOIN generate_series(1, 3) AS k
),
ins_fr AS (
  INSERT INTO flow_run (id, name, state_type, state_name, state_timestamp, state_id, run_count,
                        expected_start_time, start_time, end_time, total_run_time, flow_version,
                        parameters, context, empirical_policy, tags, auto_scheduled, flow_id,
                        deployment_id, work_queue_name, work_queue_id, job_variables, labels,
                        created, updated)
  SELECT id, name, st, initcap(st::text), t0 + dur, sid, 1,
         t0 - interval '2 seconds', t0, t0 + dur, dur, md5('dr-flow'),
         jsonb_build_object('size', g %% 50), '{}',
         '{"retries": 0, "resuming": false, "pause_keys": [], "retry_type": null,
           "max_retries": 0, "retry_delay": 0, "retry_delay_seconds": 0.0}',
         '["dr-history"]', true, %(flow)s, %(dep)s, 'default', %(wq)s, '{}',
         jsonb_build_object('prefect.flow.id', %(flow)s::text,
                            'prefect.deployment.id', %(dep)s::text),
         t0 - interval '2 seconds', t0 + dur
  FROM runs
),
ins_frs AS (
  INSERT INTO flow_run_state (id, flow_run_id, type, name, "timestamp", message, state_details,
                              created, updated)
  SELECT id, run_id, st::state_type, initcap(st), ts,
         CASE WHEN st = 'FAILED' THEN format(
           'Flow run encountered an exception: ValueError: row %%s of batch %%s failed validation',
           g * 7919 %% 100000, substr(md5(run_id::text), 1, 8)) END,
         jsonb_build_object('flow_run_id', run_id, 'task_run_id', null,
                            'transition_id', gen_random_uuid(), 'untrackable_result', true,
                            'pause_reschedule', false),
         ts, ts
  FROM fstates
),
ins_tr AS (
  INSERT INTO task_run (id, name, state_type, state_name, state_timestamp, state_id, run_count,
                        expected_start_time, start_time, end_time, total_run_time, task_key,
                        dynamic_key, empirical_policy, task_inputs, tags, flow_run_id,
                        flow_run_run_count, labels, created, updated)
  SELECT id, name, st, initcap(st::text), ts + dur, sid, 1, ts, ts, ts + dur, dur,
         (ARRAY['extract-4891aed0', 'transform-a1c29e47'])[j], id::text,
         '{"retries": 1, "max_retries": 0, "retry_delay": 0, "retry_delay_seconds": 0.0,
           "retry_jitter_factor": null}',
         CASE WHEN j = 1 THEN '{"size": []}'::jsonb
              ELSE jsonb_build_object('rows', jsonb_build_array(jsonb_build_object(
                     'input_type', 'task_run', 'id', fid))) END,
         '["dr-history"]', fid, 1, '{}', ts, ts + dur
  FROM tasks
),
ins_trs AS (
  INSERT INTO task_run_state (id, task_run_id, type, name, "timestamp", message, state_details,
                              created, updated)
  SELECT id, task_id, st::state_type, initcap(st), ts,
         CASE WHEN st = 'FAILED' THEN 'Task run failed: ValueError("bad row")' ELSE '' END,
         jsonb_build_object('flow_run_id', fid, 'task_run_id', task_id, 'deferred', false,
                            'untrackable_result', true, 'pause_reschedule', false),
         ts, ts
  FROM tstates
),
ins_tlog AS (
  INSERT INTO log (name, level, flow_run_id, task_run_id, message, "timestamp", created, updated)
  SELECT 'prefect.task_runs', (ARRAY[10, 20, 20, 20, 20, 20, 30])[1 + (h & 65535) %% 7],
         t.fid, t.id,
         format(
           (ARRAY[
             'Extracted %%s rows from partition %%s (%%s) in %%s ms',
             'Loading batch %%s into staging.%%s, checksum %%s, elapsed %%s ms',
             'Retrying GET https://api.example.internal/v2/items?page=%%s&t=%%s (%%s), wait %%s ms',
             'Wrote %%s records to s3://lake/raw/%%s/%%s.parquet in %%s ms',
             'Opening connection to warehouse node %%s for schema %%s, session %%s, latency %%s ms',
             'Wrote checkpoint %%s for stream %%s: offset %%s, lag %%s ms',
             'Validation: %%s rows passed, table %%s, run %%s, took %%s ms'
           ])[1 + (i %% 7)],
           h & 65535,
           (ARRAY['orders', 'customers', 'events', 'payments', 'inventory', 'sessions'])
             [1 + ((h >> 8) & 65535) %% 6],
           substr(md5(t.id::text || i), 1, 4 + (i %% 13)),
           (h >> 4) & 1023),
         x.at, x.at, x.at
  FROM tasks t
  CROSS JOIN generate_series(1, %(logs_per_task)s) AS i
  CROSS JOIN LATERAL (SELECT hashtext(t.id::text || i) AS h,
                             t.ts + t.dur * i / %(logs_per_task)s AS at) AS x
),
ins_flog AS (
  INSERT INTO log (name, level, flow_run_id, task_run_id, message, "timestamp", created, updated)
  SELECT 'prefect.flow_runs', CASE WHEN i = 1 AND r.st = 'FAILED' THEN 40 ELSE 20 END, r.id, null,
         CASE i
           WHEN 1 THEN format('Beginning flow run %%L for flow ''dr-flow''', r.name)
           WHEN 2 THEN format('View at http://127.0.0.1/runs/flow-run/%%s', r.id)
           ELSE format('Processed %%s/%%s partitions (%%s%%%%), cursor=%%s', i, %(flow_logs)s,
                       i * 100 / %(flow_logs)s, substr(md5(r.id::text || i), 1, 16))
         END,
         r.t0 + r.dur * i / %(flow_logs)s, now(), now()
  FROM runs r CROSS JOIN generate_series(1, %(flow_logs)s) AS i
),
ev_src AS (
  SELECT s.ts AS occurred, 'prefect.flow-run.' || initcap(s.st) AS event,
         'prefect.flow-run.' || s.run_id AS resource_id,
         jsonb_build_object('prefect.resource.id', 'prefect.flow-run.' || s.run_id,
                            'prefect.resource.name', s.run_name,
                            'prefect.run-count', '1',
                            'prefect.state-name', initcap(s.st),
                            'prefect.state-type', s.st,
                            'prefect.state-timestamp', s.ts) AS resource,
         jsonb_build_array(
           jsonb_build_object('prefect.resource.id', 'prefect.flow.' || %(flow)s::text,
                              'prefect.resource.role', 'flow', 'prefect.resource.name', 'dr-flow'),
           jsonb_build_object('prefect.resource.id', 'prefect.deployment.' || %(dep)s::text,
                              'prefect.resource.role', 'deployment',
                              'prefect.resource.name', 'dr-deployment'),
           jsonb_build_object('prefect.resource.id', 'prefect.work-queue.' || %(wq)s::text,
                              'prefect.resource.role', 'work-queue',
                              'prefect.resource.name', 'default'),
           jsonb_build_object('prefect.resource.id', 'prefect.tag.dr-history',
                              'prefect.resource.role', 'tag')) AS related,
         jsonb_build_object(
           'intended', jsonb_build_object('from', s.prev, 'to', s.st),
           'initial_state', jsonb_build_object('type', s.prev, 'name', initcap(s.prev)),
           'validated_state', jsonb_build_object('type', s.st, 'name', initcap(s.st),
                                                 'message', '')) AS payload
  FROM fstates s
  WHERE s.ts > now() - interval '6 days'
  UNION ALL
  SELECT s.ts, 'prefect.task-run.' || initcap(s.st),
         'prefect.task-run.' || s.task_id,
         jsonb_build_object('prefect.resource.id', 'prefect.task-run.' || s.task_id,
                            'prefect.resource.name', s.task_name,
                            'prefect.state-name', initcap(s.st),
                            'prefect.state-type', s.st,
                            'prefect.state-timestamp', s.ts),
         jsonb_build_array(
           jsonb_build_object('prefect.resource.id', 'prefect.flow-run.' || s.fid,
                              'prefect.resource.role', 'flow-run',
                              'prefect.resource.name', s.fname),
           jsonb_build_object('prefect.resource.id', 'prefect.flow.' || %(flow)s::text,
                              'prefect.resource.role', 'flow', 'prefect.resource.name', 'dr-flow'),
           jsonb_build_object('prefect.resource.id', 'prefect.tag.dr-history',
                              'prefect.resource.role', 'tag')),
         jsonb_build_object(
           'intended', jsonb_build_object('from', s.prev, 'to', s.st),
           'initial_state', jsonb_build_object('type', s.prev, 'name', initcap(s.prev)),
           'validated_state', jsonb_build_object('type', s.st, 'name', initcap(s.st)),
           'task_run', jsonb_build_object(
             'id', s.task_id, 'name', s.task_name, 'flow_run_id', s.fid, 'run_count', 1,
             'flow_run_run_count', 1, 'task_key', 'k-' || substr(md5(s.task_id::text), 1, 8),
             'dynamic_key', s.task_id::text, 'cache_key', null, 'cache_expiration', null,
             'task_version', md5(s.task_name), 'tags', jsonb_build_array('dr-history'),
             'labels', jsonb_build_object('prefect.flow-run.id', s.fid::text),
             'empirical_policy', jsonb_build_object('max_retries', 0, 'retries', 1,
               'retry_delay', 0, 'retry_delay_seconds', 0.0, 'retry_jitter_factor', null),
             'task_inputs', jsonb_build_object('rows', jsonb_build_array(jsonb_build_object(
               'input_type', 'task_run', 'id', s.fid))),
             'expected_start_time', s.ts, 'start_time', s.ts, 'end_time', null,
             'total_run_time', 0.0, 'estimated_run_time', 0.0,
             'estimated_start_time_delta', 0.0),
           'state_details', jsonb_build_object(
             'flow_run_id', s.fid, 'task_run_id', s.task_id, 'child_flow_run_id', null,
             'scheduled_time', null, 'cache_key', null, 'cache_expiration', null,
             'deferred', false, 'untrackable_result', true, 'pause_timeout', null,
             'pause_reschedule', false, 'pause_key', null, 'run_input_keyset', null,
             'refresh_cache', null, 'retriable', null, 'transition_id', gen_random_uuid(),
             'task_parameters_id', null,
             'traceparent', '00-' || md5(s.fid::text) || '-' || substr(md5(s.task_id::text), 1, 16)
                            || '-01'))
  FROM tstates s
  WHERE s.ts > now() - interval '6 days'
  UNION ALL
  -- Flow-run heartbeats (the runner sends one every 30 s while a run is running).
  SELECT r.t0 + make_interval(secs => 30 * h), 'prefect.flow-run.heartbeat',
         'prefect.flow-run.' || r.id,
         jsonb_build_object('prefect.resource.id', 'prefect.flow-run.' || r.id,
                            'prefect.resource.name', r.name, 'prefect.run-count', '1'),
         jsonb_build_array(
           jsonb_build_object('prefect.resource.id', 'prefect.flow.' || %(flow)s::text,
                              'prefect.resource.role', 'flow', 'prefect.resource.name', 'dr-flow'),
           jsonb_build_object('prefect.resource.id', 'prefect.deployment.' || %(dep)s::text,
                              'prefect.resource.role', 'deployment',
                              'prefect.resource.name', 'dr-deployment')),
         '{}'::jsonb
  FROM runs r
  CROSS JOIN LATERAL generate_series(1, greatest(1, (extract(epoch FROM r.dur) / 30)::int)) AS h
  WHERE r.t0 > now() - interval '6 days'
),
ins_ev AS (
  INSERT INTO events (occurred, event, resource_id, resource, related_resource_ids, related,
                      payload, received, recorded)
  SELECT occurred, event, resource_id, resource,
         (SELECT jsonb_agg(r -> 'prefect.resource.id') FROM jsonb_array_elements(related) AS r),
         related, payload,
         occurred + interval '15 milliseconds', occurred + interval '40 milliseconds'
  FROM ev_src
  RETURNING id, occurred, resource_id, resource, related
)
-- As the server's event persister does: one row for the primary resource (role '') and one per
-- related resource.
INSERT INTO event_resources (occurred, resource_id, resource_role, resource, event_id)
SELECT occurred, resource_id, '', resource::json, id FROM ins_ev
UNION ALL
SELECT occurred, r ->> 'prefect.resource.id', r ->> 'prefect.resource.role', r::json, id
FROM ins_ev, jsonb_array_elements(ins_ev.related) AS r
"""


def grow_history(target_gb: float, max_runs_per_batch: int) -> int:
    """Insert synthetic run history until pg_database_size reaches about target_gb GB."""
    import psycopg

    url = os.environ.get("PREFECT_DR_DATABASE_URL")
    if not url:
        raise SystemExit(
            "seed: --history-gb needs PREFECT_DR_DATABASE_URL (and PGPASSWORD): "
            'eval "$(scripts/stack env)" first'
        )
    target = int(target_gb * 1024**3)
    with psycopg.connect(url, autocommit=True) as conn:

        def db_size() -> int:
            return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]

        size = db_size()
        say(f"history: database is {size / 1024**2:.1f} MiB, target {target / 1024**2:.1f} MiB")
        if size >= target:
            return size
        ids = conn.execute(
            """SELECT f.id, d.id, q.id
               FROM deployment d JOIN flow f ON f.id = d.flow_id
               JOIN work_queue q ON q.id = d.work_queue_id
               WHERE f.name = %s AND d.name = %s""",
            (FLOW_NAME, DEPLOYMENT_NAME),
        ).fetchone()
        if ids is None:
            raise SystemExit("seed: dr-flow/dr-deployment missing: cannot attach history")
        flow_id, dep_id, wq_id = ids
        started, batch, runs_total, initial = time.monotonic(), 0, 0, size
        runs = 50  # small first batch to measure the bytes one run costs
        while size < target:
            before = size
            params = {
                "runs": runs,
                "salt": f"{time.time_ns()}-{batch}",
                "flow": flow_id,
                "dep": dep_id,
                "wq": wq_id,
                "logs_per_task": LOGS_PER_TASK,
                "flow_logs": FLOW_LOGS,
            }
            with conn.transaction():
                conn.execute(HISTORY_SQL, params)
            batch += 1
            runs_total += runs
            size = db_size()
            rate = (size - initial) / 1024**2 / max(time.monotonic() - started, 1e-6)
            say(
                f"history: batch {batch}: +{runs} runs ({runs_total} total, "
                f"~{runs_total * (2 * LOGS_PER_TASK + FLOW_LOGS):,} log rows), "
                f"database {size / 1024**2:.1f} MiB ({rate:.1f} MiB/s)"
            )
            per_run = max((size - before) / runs, 1.0)
            runs = int(min(max((target - size) / per_run, 20), max_runs_per_batch))
        conn.execute("ANALYZE")
        size = db_size()
        say(
            f"history: done in {time.monotonic() - started:.1f}s; "
            f"pg_database_size = {size} bytes ({size / 1024**3:.3f} GiB)"
        )
        return size


# --- main ------------------------------------------------------------------------------------


def main() -> int:
    args = parse_args()
    api = os.environ.get("PREFECT_API_URL")
    if not api:
        raise SystemExit('seed: PREFECT_API_URL is not set: eval "$(scripts/stack env)" first')
    started = time.monotonic()
    say(f"seeding {api}")
    info = asyncio.run(seed_objects())

    have = len(asyncio.run(completed_seed_runs()))
    missing = max(args.flow_runs - have, 0)
    if missing:
        say(f"running {missing} flow run(s) of {FLOW_NAME} ({have} completed already)")
        run_flows(missing)
    else:
        say(f"{have} completed seeded flow runs already present")
    counts = asyncio.run(wait_for_history(args.flow_runs))

    size_note = ""
    if args.history_gb > 0:
        size = grow_history(args.history_gb, args.batch_runs)
        size_note = f" db_size={size / 1024**3:.3f}GiB"
    print(
        f"seeded {api}: blocks=dr-secret,dr-warehouse variables={len(VARIABLES)} "
        f"work_pool={POOL_NAME}(+{EXTRA_QUEUE}) deployment={FLOW_NAME}/{DEPLOYMENT_NAME} "
        f"({info['deployment_id']}) automation={AUTOMATION_NAME} gcl={GCL_NAME} "
        f"completed_flow_runs={counts['flow_runs']} task_runs={counts['task_runs']} "
        f"logs>={counts['logs']}{size_note} in {time.monotonic() - started:.1f}s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
