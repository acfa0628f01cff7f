"""The PostgreSQL hot path without scans that grow with the run, and without one hot row.

Measured with `benchmarks/platform_load.py` (500 agents, 300 cycles/s), what each change removes:

- Leasing: units are leased lowest first, so verified units, and units whose replicas are all out
  (500 of them with 500 agents), pile up at the front. The planner (which assumes open units are
  spread evenly over ids) walked the primary key past all of them and seq-scanned the contributor's
  replicas: 1.5 ms per lease after 3,000 verified units, growing, and 331 index entries read per
  lease. Now a partial index holds exactly the leasable units, `ix_units_open (task_id, seq) WHERE
  state = 'open' AND issued < target`, ordered by `seq` (the id order within a task, which the
  primary key cannot serve, so the planner always takes it), and the contributor test is one probe
  of `uq_replicas_unit_contributor` per candidate (0.06-0.12 ms).
- A unit's submitted replicas (`vlc_snapshot`, `vlc_apply`): found through `ix_submissions_unit`
  and the replicas' primary key, not through every submitted replica in `ix_replicas_state_deadline`
  (123 rows read per call).
- Fewer index entries written per cycle (a unit and a replica change state twice per cycle, and
  such an update writes an entry in every index): `ix_units_pick` (superseded by `ix_units_open`)
  and `ix_replicas_agent_state` (no query uses it) are dropped, and `ix_replicas_state_deadline`
  becomes `ix_replicas_leased (deadline) WHERE state = 'leased'`, all the lease sweeper reads.
- Reputation per agent version: every verified unit added to its version's counters, nearly all
  agents run one version, so every verifying transaction queued on that row's lock until the one
  before had committed (most of `vlc_apply`'s 4-5 ms). `version_stats` now has a `shard` in its key;
  writers add to one of `reputation.VERSION_SHARDS` rows picked at random, readers sum a version's
  rows. Existing counts move to shard 0.

The three functions are given whole (a migration is a snapshot); only the statements above differ
from 0002's.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 08:40:00
"""

import sqlalchemy as sa
from alembic import op

from vlcurate.server.migrate import revision_module

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

LEASABLE = sa.text("state = 'open' AND issued < target")
LEASED = sa.text("state = 'leased'")
_COUNTS = ["gold_pass", "gold_fail", "agree", "disagree"]

SNAPSHOT = """
CREATE OR REPLACE FUNCTION vlc_snapshot(p_hash text, p_lease bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
RETURN jsonb_build_object(
  'agent', (SELECT to_jsonb(x) FROM (
      SELECT a.id, a.name, a.version, a.revoked, a.expires_at, a.rate_per_minute, a.daily_quota,
             a.quota_day, a.quota_used, c.valid_streak, c.id AS cid, c.name AS cname, c.paused,
             c.pause_reason
      FROM agents a JOIN contributors c ON c.id = a.contributor_id
      WHERE a.token_hash = p_hash) x),
  'replica', (SELECT to_jsonb(x) FROM (
      SELECT r.id, r.agent_id, r.unit_id, r.task_id, r.seed, r.gold_items, r.state, r.deadline
      FROM replicas r WHERE r.id = p_lease) x),
  'unit', (SELECT to_jsonb(x) FROM (
      SELECT u.id, u.task_id, u.first_item, u.last_item, u.n_items, u.state, u.target, u.issued,
             u.replicas_total
      FROM units u JOIN replicas r ON r.unit_id = u.id WHERE r.id = p_lease) x),
  'subs', (SELECT coalesce(jsonb_agg(jsonb_build_object(
              'id', s.id, 'scores', encode(s.scores, 'base64'), 'statuses', s.statuses,
              'contributor_id', s.contributor_id, 'agent_id', s.agent_id,
              'agent_version', s.agent_version, 'rid', s.replica_id) ORDER BY s.id), '[]'::jsonb)
      FROM submissions s
      WHERE s.unit_id = (SELECT unit_id FROM replicas WHERE id = p_lease)
        AND (SELECT r2.state FROM replicas r2 WHERE r2.id = s.replica_id) = 'submitted'),
  'gold', (SELECT coalesce(jsonb_agg(jsonb_build_array(g.item_id, g.score, g.status)), '[]'::jsonb)
      FROM replicas r JOIN gold g ON g.task_id = r.task_id
      WHERE r.id = p_lease
        AND g.item_id IN (SELECT e::bigint FROM json_array_elements_text(r.gold_items) AS e))
);
END
$$
"""

LEASE = """
CREATE OR REPLACE FUNCTION vlc_lease(p_agent bigint, p_contributor bigint, p_tasks bigint[],
                          p_single_tasks bigint[], p_gold jsonb, p_seed bigint, p_key text,
                          p_now timestamptz) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
  u record;
  t record;
  v_task bigint;
  v_found boolean := false;
  v_target int;
  v_gold jsonb;
  v_id bigint;
  v_deadline timestamptz;
  v_today text := to_char(p_now AT TIME ZONE 'UTC', 'YYYY-MM-DD');
BEGIN
  -- Lowest task first, then lowest unit (seq) within it, from the open-units index only. The
  -- contributor test is a scalar subquery so that it stays one index probe per candidate unit
  -- (as NOT EXISTS the planner may turn it into a scan of all of the contributor's replicas).
  FOREACH v_task IN ARRAY ARRAY(SELECT DISTINCT x FROM unnest(p_tasks) AS x ORDER BY x) LOOP
    SELECT un.id, un.task_id, un.first_item, un.last_item, un.target, un.issued, un.replicas_total
      INTO u FROM units un
     WHERE un.state = 'open' AND un.issued < un.target AND un.task_id = v_task
       AND (SELECT 1 FROM replicas r
             WHERE r.unit_id = un.id AND r.contributor_id = p_contributor LIMIT 1) IS NULL
     ORDER BY un.seq LIMIT 1
     FOR UPDATE OF un SKIP LOCKED;
    v_found := FOUND;
    EXIT WHEN v_found;
  END LOOP;
  IF NOT v_found THEN
    RETURN NULL;
  END IF;
  SELECT quorum, lease_seconds, gold_per_unit INTO t FROM tasks WHERE id = u.task_id;
  v_target := u.target;
  IF u.issued = 0 THEN
    -- the trust and audit dice were rolled in Python (p_single_tasks)
    v_target := CASE WHEN u.task_id = ANY(p_single_tasks) THEN 1
                     ELSE greatest(t.quorum, CASE WHEN u.replicas_total > 0 THEN u.target
                                                  ELSE t.quorum END) END;
  END IF;
  -- hidden checks: the first gold_per_unit candidates (sampled in Python) outside this unit
  SELECT coalesce(jsonb_agg(g ORDER BY g), '[]'::jsonb) INTO v_gold FROM (
    SELECT e.value::bigint AS g
      FROM jsonb_array_elements_text(coalesce(p_gold -> u.task_id::text, '[]'::jsonb))
           WITH ORDINALITY AS e(value, n)
     WHERE e.value::bigint NOT BETWEEN u.first_item AND u.last_item
     ORDER BY e.n LIMIT t.gold_per_unit) picked;
  v_deadline := p_now + make_interval(secs => t.lease_seconds);
  INSERT INTO replicas (unit_id, task_id, contributor_id, agent_id, seed, gold_items, state,
                        leased_at, deadline, lease_key, finished_at)
  VALUES (u.id, u.task_id, p_contributor, p_agent, p_seed, v_gold::json, 'leased', p_now,
          v_deadline, p_key, NULL)
  RETURNING id INTO v_id;
  UPDATE units SET issued = issued + 1, replicas_total = replicas_total + 1, target = v_target
   WHERE id = u.id;
  UPDATE agents SET quota_used = CASE WHEN quota_day = v_today THEN quota_used + 1 ELSE 1 END,
                    quota_day = v_today, last_seen = p_now
   WHERE id = p_agent;
  RETURN jsonb_build_object(
    'lease_id', v_id, 'unit_id', u.id, 'task_id', u.task_id, 'first_item', u.first_item,
    'last_item', u.last_item, 'seed', p_seed, 'gold_items', v_gold, 'deadline', v_deadline,
    'items', (SELECT jsonb_agg(jsonb_build_array(i.id, i.caption) ORDER BY i.id)
                FROM items i WHERE i.id BETWEEN u.first_item AND u.last_item));
END
$$
"""


APPLY = """
CREATE OR REPLACE FUNCTION vlc_apply(p jsonb, p_scores bytea, p_verified bytea) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
  r record;
  u record;
  v_subs bigint[];
  v_sid bigint;
  v_now timestamptz := (p ->> 'now')::timestamptz;
  v_unit jsonb := p -> 'unit';
  v_lease jsonb := NULL;
BEGIN
  -- 1. still as the snapshot saw it? (otherwise write nothing; the caller takes the slow path)
  SELECT state, agent_id INTO r FROM replicas WHERE id = (p ->> 'replica_id')::bigint FOR UPDATE;
  IF NOT FOUND OR r.state <> 'leased' OR r.agent_id <> (p ->> 'agent_id')::bigint THEN
    RETURN '{"stale": true}'::jsonb;
  END IF;
  SELECT state, target, issued INTO u FROM units WHERE id = (p ->> 'unit_id')::bigint FOR UPDATE;
  IF u.state <> p #>> '{expect,state}' OR u.target <> (p #>> '{expect,target}')::int
     OR u.issued <> (p #>> '{expect,issued}')::int THEN
    RETURN '{"stale": true}'::jsonb;
  END IF;
  SELECT coalesce(array_agg(s.id ORDER BY s.id), '{}') INTO v_subs
    FROM submissions s
   WHERE s.unit_id = (p ->> 'unit_id')::bigint
     AND (SELECT r2.state FROM replicas r2 WHERE r2.id = s.replica_id) = 'submitted';
  IF v_subs <> ARRAY(SELECT jsonb_array_elements_text(p #> '{expect,subs}')::bigint) THEN
    RETURN '{"stale": true}'::jsonb;
  END IF;

  -- 2. the submission and its replica
  INSERT INTO submissions (replica_id, agent_id, contributor_id, unit_id, idempotency_key,
                           model_fingerprint, agent_version, scores, statuses, gold_ok,
                           gold_max_error, state, response, received_at)
  VALUES ((p ->> 'replica_id')::bigint, (p ->> 'agent_id')::bigint,
          (p ->> 'contributor_id')::bigint, (p ->> 'unit_id')::bigint, p ->> 'key',
          p ->> 'fingerprint', p ->> 'version', p_scores, (p -> 'statuses')::json,
          (p ->> 'gold_ok')::boolean, (p ->> 'gold_max_error')::float8, p ->> 'state',
          (p -> 'response')::json, v_now)
  RETURNING id INTO v_sid;
  UPDATE replicas SET state = p ->> 'replica_state', finished_at = v_now
   WHERE id = (p ->> 'replica_id')::bigint;

  -- 3. the unit
  IF v_unit ->> 'action' = 'more' THEN
    UPDATE units SET target = (v_unit ->> 'target')::int WHERE id = (p ->> 'unit_id')::bigint;
  ELSIF v_unit ->> 'action' = 'inconclusive' THEN
    UPDATE units SET state = 'inconclusive' WHERE id = (p ->> 'unit_id')::bigint;
  ELSIF v_unit ->> 'action' = 'verified' THEN
    UPDATE units SET state = 'verified', verified_scores = p_verified,
                     verified_status = (v_unit -> 'status')::json, verified_at = v_now,
                     single_trusted = (v_unit ->> 'single')::boolean
     WHERE id = (p ->> 'unit_id')::bigint;
    UPDATE submissions SET state = 'valid'
     WHERE id IN (SELECT jsonb_array_elements_text(v_unit -> 'subs')::bigint);
    UPDATE replicas SET state = 'valid', finished_at = v_now
     WHERE id IN (SELECT jsonb_array_elements_text(v_unit -> 'replicas')::bigint);
    INSERT INTO ledger (contributor_id, agent_id, submission_id, unit_id, kind, points, pairs,
                        reason, reverses_id, created_at)
    SELECT c.contributor_id, c.agent_id, coalesce(c.submission_id, v_sid),
           (p ->> 'unit_id')::bigint, 'credit', c.points, c.pairs, v_unit ->> 'reason', NULL, v_now
      FROM jsonb_to_recordset(v_unit -> 'credits')
           AS c(contributor_id bigint, agent_id bigint, submission_id bigint, points float8,
                pairs int);
    INSERT INTO gold (task_id, item_id, score, status, source)
    SELECT (p ->> 'task_id')::bigint, g.item_id, g.score, 'ok', 'verified'
      FROM jsonb_to_recordset(v_unit -> 'promote') AS g(item_id bigint, score float8)
    ON CONFLICT (task_id, item_id) DO NOTHING;
  END IF;

  -- 4. reputation and balances (deltas decided in Python)
  UPDATE contributors c
     SET points = c.points + d.points, gold_pass = c.gold_pass + d.gold_pass,
         agree = c.agree + d.agree, n_valid = c.n_valid + d.n_valid,
         valid_streak = c.valid_streak + d.n_valid
    FROM jsonb_to_recordset(p -> 'contributors')
         AS d(id bigint, points float8, gold_pass int, agree int, n_valid int)
   WHERE c.id = d.id;
  INSERT INTO version_stats AS v (version, shard, gold_pass, gold_fail, agree, disagree)
  SELECT d.version, (p ->> 'version_shard')::smallint, d.gold_pass, 0, d.agree, 0
    FROM jsonb_to_recordset(p -> 'versions') AS d(version text, gold_pass int, agree int)
  ON CONFLICT (version, shard) DO UPDATE
     SET gold_pass = v.gold_pass + excluded.gold_pass, agree = v.agree + excluded.agree;

  -- 5. the next unit, in the same transaction
  IF p ? 'lease' THEN
    v_lease := vlc_lease((p ->> 'agent_id')::bigint, (p ->> 'contributor_id')::bigint,
                         ARRAY(SELECT jsonb_array_elements_text(p #> '{lease,tasks}')::bigint),
                         ARRAY(SELECT jsonb_array_elements_text(p #> '{lease,single_tasks}')::bigint),
                         p #> '{lease,gold}', (p #>> '{lease,seed}')::bigint, p #>> '{lease,key}',
                         v_now);
  END IF;
  RETURN jsonb_build_object('submission_id', v_sid, 'lease', v_lease);
END
$$
"""


def _counts() -> list[sa.Column[int]]:
    return [sa.Column(c, sa.Integer(), nullable=False) for c in _COUNTS]


def _version_stats(new: str, *key: sa.Column[int], pk: str) -> None:
    op.create_table(
        new,
        sa.Column("version", sa.String(length=64), nullable=False),
        *key,
        *_counts(),
        sa.PrimaryKeyConstraint("version", *(k.name for k in key), name=pk),
    )


def upgrade() -> None:
    with op.batch_alter_table("units", schema=None) as batch_op:
        batch_op.create_index(
            "ix_units_open",
            ["task_id", "seq"],
            unique=False,
            postgresql_where=LEASABLE,
            sqlite_where=LEASABLE,
        )
        batch_op.drop_index("ix_units_pick")
    with op.batch_alter_table("replicas", schema=None) as batch_op:
        batch_op.drop_index("ix_replicas_state_deadline")
        batch_op.drop_index("ix_replicas_agent_state")
        batch_op.create_index(
            "ix_replicas_leased", ["deadline"], unique=False, postgresql_where=LEASED, sqlite_where=LEASED
        )
    shard = sa.Column("shard", sa.SmallInteger(), autoincrement=False, nullable=False)
    _version_stats("version_stats_new", shard, pk="pk_version_stats")
    cols = ", ".join(_COUNTS)
    op.execute(
        f"INSERT INTO version_stats_new (version, shard, {cols}) SELECT version, 0, {cols} FROM version_stats"
    )
    op.drop_table("version_stats")
    op.rename_table("version_stats_new", "version_stats")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(SNAPSHOT)
        op.execute(LEASE)
        op.execute(APPLY)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        before = revision_module("0002_pg_hot_path.py")
        for sql in (before.SNAPSHOT, before.LEASE, before.APPLY):
            op.execute(str(sql).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    _version_stats("version_stats_old", pk="version_stats_pkey")
    sums = ", ".join(f"sum({c})" for c in _COUNTS)
    op.execute(
        f"INSERT INTO version_stats_old (version, {', '.join(_COUNTS)}) "
        f"SELECT version, {sums} FROM version_stats GROUP BY version"
    )
    op.drop_table("version_stats")
    op.rename_table("version_stats_old", "version_stats")
    with op.batch_alter_table("replicas", schema=None) as batch_op:
        batch_op.drop_index("ix_replicas_leased")
        batch_op.create_index("ix_replicas_agent_state", ["agent_id", "state"], unique=False)
        batch_op.create_index("ix_replicas_state_deadline", ["state", "deadline"], unique=False)
    with op.batch_alter_table("units", schema=None) as batch_op:
        batch_op.create_index("ix_units_pick", ["state", "task_id", "id"], unique=False)
        batch_op.drop_index("ix_units_open")
