"""Defences against colluding accounts (issue 13): in-unit hidden checks with trusted answers only,
random assignment, caps on leases held, walking away counted, linked accounts.

- `gold`: answers promoted from verified units (`source = 'verified'`, i.e. the crowd's own word)
  are deleted: an answer key must not be poisonable by a junk quorum. Checks can be retired
  (`retired_at`, `retired_reason`) when the server, re-scoring a check a trusted contributor failed,
  no longer stands by its answer; `check_disputes` records each such look.
- `replicas`: "one replica per unit and contributor" holds only for live replicas (not released or
  expired): a contributor who walked away may get the unit again, so exclusion never starves a unit.
  Partial indexes count the leases an agent and a contributor hold (the caps).
- `contributors.walkaway_hour` / `walkaways`: leases handed back or let expire, per UTC hour.
- `contributor_origins`: keyed hashes of the addresses a contributor leased from (links).
- PostgreSQL: `vlc_lease` picks a random leasable unit (a random start in `seq`, wrapping) instead
  of the lowest, refuses over the caps (`{"capped": reason}`), hands out no extra check items;
  `vlc_snapshot` reads the unit's own checks (not retired), the walk-away counters, and which other
  submitters of the unit are linked to the caller; `vlc_apply` calls the new `vlc_lease` and no longer
  promotes verified scores into the checks.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 02:10:00
"""

import sqlalchemy as sa
from alembic import op

from vlcurate.server.migrate import revision_module

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

LIVE = sa.text("state NOT IN ('released', 'expired')")
LEASED = sa.text("state = 'leased'")

SNAPSHOT = """
CREATE OR REPLACE FUNCTION vlc_snapshot(p_hash text, p_lease bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
  v_cid bigint := (SELECT a.contributor_id FROM agents a WHERE a.token_hash = p_hash);
BEGIN
RETURN jsonb_build_object(
  'agent', (SELECT to_jsonb(x) FROM (
      SELECT a.id, a.name, a.version, a.revoked, a.expires_at, a.rate_per_minute, a.daily_quota,
             a.quota_day, a.quota_used, c.valid_streak, c.id AS cid, c.name AS cname, c.paused,
             c.pause_reason, c.walkaway_hour, c.walkaways
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
  'linked', (SELECT coalesce(jsonb_agg(DISTINCT s.contributor_id), '[]'::jsonb)
      FROM submissions s
      WHERE s.unit_id = (SELECT unit_id FROM replicas WHERE id = p_lease)
        AND s.contributor_id <> v_cid
        AND EXISTS (SELECT 1 FROM contributor_origins o1 JOIN contributor_origins o2
                      ON o2.origin = o1.origin AND o2.contributor_id = v_cid
                     WHERE o1.contributor_id = s.contributor_id)),
  'gold', (SELECT coalesce(jsonb_agg(jsonb_build_array(g.item_id, g.score, g.status)), '[]'::jsonb)
      FROM replicas r JOIN units u ON u.id = r.unit_id JOIN gold g ON g.task_id = r.task_id
      WHERE r.id = p_lease AND g.retired_at IS NULL
        AND (g.item_id BETWEEN u.first_item AND u.last_item
             OR g.item_id IN (SELECT e::bigint FROM json_array_elements_text(r.gold_items) AS e)))
);
END
$$
"""

LEASE = """
CREATE OR REPLACE FUNCTION vlc_lease(p_agent bigint, p_contributor bigint, p_tasks bigint[],
                          p_single_tasks bigint[], p_start float8, p_seed bigint, p_key text,
                          p_now timestamptz, p_max_agent int, p_max_contributor int) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
  u record;
  t record;
  v_task bigint;
  v_found boolean := false;
  v_target int;
  v_start int;
  v_held int;
  v_id bigint;
  v_deadline timestamptz;
  v_today text := to_char(p_now AT TIME ZONE 'UTC', 'YYYY-MM-DD');
BEGIN
  -- The caps on leases held at once. The agent's row is locked first, so one token's concurrent
  -- requests are counted one after another (it is updated below anyway).
  PERFORM 1 FROM agents WHERE id = p_agent FOR UPDATE;
  SELECT count(*) INTO v_held FROM replicas WHERE agent_id = p_agent AND state = 'leased';
  IF v_held >= p_max_agent THEN
    RETURN jsonb_build_object('capped', format('this agent holds %s active leases (cap %s)',
                                               v_held, p_max_agent));
  END IF;
  SELECT count(*) INTO v_held FROM replicas WHERE contributor_id = p_contributor AND state = 'leased';
  IF v_held >= p_max_contributor THEN
    RETURN jsonb_build_object('capped', format('this contributor holds %s active leases (cap %s)',
                                               v_held, p_max_contributor));
  END IF;
  -- A random leasable unit: the first at or after a random place in seq order, else the first
  -- before it. Nobody can predict or steer which unit a lease gets. The contributor test is a
  -- scalar subquery (one probe of uq_replicas_unit_contributor_live per candidate).
  FOREACH v_task IN ARRAY ARRAY(SELECT DISTINCT x FROM unnest(p_tasks) AS x ORDER BY x) LOOP
    v_start := floor(p_start * (coalesce((SELECT max(seq) FROM units WHERE task_id = v_task), 0) + 1));
    SELECT un.id, un.task_id, un.first_item, un.last_item, un.target, un.issued, un.replicas_total
      INTO u FROM units un
     WHERE un.state = 'open' AND un.issued < un.target AND un.task_id = v_task AND un.seq >= v_start
       AND (SELECT 1 FROM replicas r
             WHERE r.unit_id = un.id AND r.contributor_id = p_contributor
               AND r.state NOT IN ('released', 'expired') LIMIT 1) IS NULL
     ORDER BY un.seq LIMIT 1
     FOR UPDATE OF un SKIP LOCKED;
    v_found := FOUND;
    IF NOT v_found THEN
      SELECT un.id, un.task_id, un.first_item, un.last_item, un.target, un.issued, un.replicas_total
        INTO u FROM units un
       WHERE un.state = 'open' AND un.issued < un.target AND un.task_id = v_task AND un.seq < v_start
         AND (SELECT 1 FROM replicas r
               WHERE r.unit_id = un.id AND r.contributor_id = p_contributor
                 AND r.state NOT IN ('released', 'expired') LIMIT 1) IS NULL
       ORDER BY un.seq LIMIT 1
       FOR UPDATE OF un SKIP LOCKED;
      v_found := FOUND;
    END IF;
    EXIT WHEN v_found;
  END LOOP;
  IF NOT v_found THEN
    RETURN NULL;
  END IF;
  SELECT quorum, lease_seconds INTO t FROM tasks WHERE id = u.task_id;
  v_target := u.target;
  IF u.issued = 0 THEN
    -- the trust and audit dice were rolled in Python (p_single_tasks)
    v_target := CASE WHEN u.task_id = ANY(p_single_tasks) THEN 1
                     ELSE greatest(t.quorum, CASE WHEN u.replicas_total > 0 THEN u.target
                                                  ELSE t.quorum END) END;
  END IF;
  v_deadline := p_now + make_interval(secs => t.lease_seconds);
  INSERT INTO replicas (unit_id, task_id, contributor_id, agent_id, seed, gold_items, state,
                        leased_at, deadline, lease_key, finished_at)
  VALUES (u.id, u.task_id, p_contributor, p_agent, p_seed, '[]'::json, 'leased', p_now,
          v_deadline, p_key, NULL)
  RETURNING id INTO v_id;
  UPDATE units SET issued = issued + 1, replicas_total = replicas_total + 1, target = v_target
   WHERE id = u.id;
  UPDATE agents SET quota_used = CASE WHEN quota_day = v_today THEN quota_used + 1 ELSE 1 END,
                    quota_day = v_today, last_seen = p_now
   WHERE id = p_agent;
  RETURN jsonb_build_object(
    'lease_id', v_id, 'unit_id', u.id, 'task_id', u.task_id, 'first_item', u.first_item,
    'last_item', u.last_item, 'seed', p_seed, 'gold_items', '[]'::jsonb, 'deadline', v_deadline,
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
                         (p #>> '{lease,start}')::float8, (p #>> '{lease,seed}')::bigint,
                         p #>> '{lease,key}', v_now, (p #>> '{lease,max_agent}')::int,
                         (p #>> '{lease,max_contributor}')::int);
  END IF;
  RETURN jsonb_build_object('submission_id', v_sid, 'lease', v_lease);
END
$$
"""

OLD_LEASE_SIGNATURE = "vlc_lease(bigint, bigint, bigint[], bigint[], jsonb, bigint, text, timestamptz)"
NEW_LEASE_SIGNATURE = (
    "vlc_lease(bigint, bigint, bigint[], bigint[], float8, bigint, text, timestamptz, int, int)"
)


def _leased_index(batch_op: object, name: str, column: str) -> None:
    batch_op.create_index(name, [column], unique=False, postgresql_where=LEASED, sqlite_where=LEASED)  # type: ignore[attr-defined]


def upgrade() -> None:
    op.execute("DELETE FROM gold WHERE source = 'verified'")
    with op.batch_alter_table("gold", schema=None) as batch_op:
        batch_op.add_column(sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("retired_reason", sa.Text(), nullable=True))
    with op.batch_alter_table("contributors", schema=None) as batch_op:
        batch_op.add_column(sa.Column("walkaway_hour", sa.String(length=13), nullable=True))
        batch_op.add_column(sa.Column("walkaways", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("contributors", schema=None) as batch_op:
        batch_op.alter_column("walkaways", server_default=None)
    op.create_table(
        "check_disputes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("gold_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("contributor_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("submitted_score", sa.Float(), nullable=True),
        sa.Column("rescored", sa.Float(), nullable=True),
        sa.Column("upheld", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["gold_id"], ["gold.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["contributor_id"], ["contributors.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_check_disputes_gold", "check_disputes", ["gold_id"], unique=False)
    op.create_table(
        "contributor_origins",
        sa.Column("contributor_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("origin", sa.String(length=32), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["contributor_id"], ["contributors.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("contributor_id", "origin"),
    )
    op.create_index("ix_contributor_origins_origin", "contributor_origins", ["origin"], unique=False)
    with op.batch_alter_table("replicas", schema=None) as batch_op:
        batch_op.drop_constraint("uq_replicas_unit_contributor", type_="unique")
    with op.batch_alter_table("replicas", schema=None) as batch_op:
        batch_op.create_index(
            "uq_replicas_unit_contributor_live",
            ["unit_id", "contributor_id"],
            unique=True,
            postgresql_where=LIVE,
            sqlite_where=LIVE,
        )
        _leased_index(batch_op, "ix_replicas_agent_leased", "agent_id")
        _leased_index(batch_op, "ix_replicas_contributor_leased", "contributor_id")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS {OLD_LEASE_SIGNATURE} CASCADE")
        op.execute(SNAPSHOT)
        op.execute(LEASE)
        op.execute(APPLY)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS {NEW_LEASE_SIGNATURE} CASCADE")
        before = revision_module("0003_hot_path_without_scans.py")
        for sql in (before.SNAPSHOT, before.LEASE, before.APPLY):
            op.execute(str(sql))
    with op.batch_alter_table("replicas", schema=None) as batch_op:
        batch_op.drop_index("ix_replicas_contributor_leased")
        batch_op.drop_index("ix_replicas_agent_leased")
        batch_op.drop_index("uq_replicas_unit_contributor_live")
    # Walked-away replicas would break the old rule (one replica per unit and contributor, ever).
    op.execute(
        "DELETE FROM replicas WHERE state IN ('released', 'expired') AND id NOT IN "
        "(SELECT min(id) FROM replicas GROUP BY unit_id, contributor_id)"
    )
    with op.batch_alter_table("replicas", schema=None) as batch_op:
        batch_op.create_unique_constraint("uq_replicas_unit_contributor", ["unit_id", "contributor_id"])
    op.drop_index("ix_contributor_origins_origin", table_name="contributor_origins")
    op.drop_table("contributor_origins")
    op.drop_index("ix_check_disputes_gold", table_name="check_disputes")
    op.drop_table("check_disputes")
    with op.batch_alter_table("contributors", schema=None) as batch_op:
        batch_op.drop_column("walkaways")
        batch_op.drop_column("walkaway_hour")
    with op.batch_alter_table("gold", schema=None) as batch_op:
        batch_op.drop_column("retired_reason")
        batch_op.drop_column("retired_at")
