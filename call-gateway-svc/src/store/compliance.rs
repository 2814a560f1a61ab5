//! The compliance gate's storage: policies, do-not-call entries, the dial attempts the caps
//! count, overrides, and the decisions' audit.
//!
//! Exact counting across replicas: the gate locks one row per rule key it counts (`case:...`,
//! `number:...`, `collector:...` in `compliance_locks`, in key order in one statement), reads
//! the attempts in the rolling windows, and records its own attempt and decision before it
//! commits; a second gate for the same case waits for that commit and then counts it. The lock
//! rows are created and locked by one upsert on PostgreSQL and SQLite; on MySQL (where a racing
//! insert takes gap locks that deadlock) outside the counting transaction the first time a key
//! is seen, then the transaction runs again.

use async_trait::async_trait;
use cco_platform::args;
use cco_platform::sql::{Arg, Backend, Mode, Row, Tx};
use chrono::{DateTime, Utc};

use super::{GatewayStore, corrupt, db_err};
use crate::domain::GwError;
use crate::domain::compliance::{
    Cap, Decision, DncEntry, DncReason, Facts, Outcome, Policy, Reason, Refusal, prefixes,
};

/// A policy as stored.
#[derive(Debug, Clone)]
pub struct StoredPolicy {
    /// The policy.
    pub policy: Policy,
    /// Bumped by every change (0: never set).
    pub version: i64,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// One dial the gate is asked to let through.
#[derive(Debug, Clone)]
pub struct Attempt<'a> {
    /// Tenant.
    pub tenant_id: &'a str,
    /// The call id the attempt will be dialled under.
    pub call_id: &'a str,
    /// Case.
    pub case_id: &'a str,
    /// The number's E.164 digits (no `+`).
    pub number: &'a str,
    /// Collector.
    pub collector_id: &'a str,
    /// Now (the gateway's clock).
    pub at: DateTime<Utc>,
}

/// An attempt and its decision, written with the call's record (see
/// [`super::calls::CallStore::insert_call`]).
#[derive(Debug, Clone)]
pub struct GateRecord {
    /// Tenant.
    pub tenant_id: String,
    /// Call id.
    pub call_id: String,
    /// Case.
    pub case_id: String,
    /// The number's E.164 digits.
    pub number: String,
    /// Collector.
    pub collector_id: String,
    /// When.
    pub at: DateTime<Utc>,
    /// The decision (allowed).
    pub decision: Decision,
}

/// What [`ComplianceStore::reserve`] did.
#[derive(Debug, Clone)]
pub enum Reserved {
    /// Another request with the same call id (a retry with the same idempotency key) was
    /// counted and audited already: dial (the call record's insert finds the other), and
    /// never withdraw what the other wrote.
    Duplicate,
    /// Counted and audited: dial.
    Allowed,
    /// A rule refused and an override let it through: counted and audited, dial.
    Overridden(Refusal),
    /// Refused: nothing written (the caller audits the refusal). `override_unusable` says an
    /// override was given but was not valid for this call.
    Refused {
        /// The refusal.
        refusal: Refusal,
        /// An override was given and could not be used.
        override_unusable: bool,
    },
}

/// Filters of ListComplianceDecisions.
#[derive(Debug, Clone, Default)]
pub struct DecisionFilter {
    /// Tenant (required).
    pub tenant_id: String,
    /// Only this collector's.
    pub collector_id: Option<String>,
    /// Only this case's.
    pub case_id: Option<String>,
    /// Only this outcome.
    pub outcome: Option<Outcome>,
    /// Only this reason.
    pub reason: Option<Reason>,
    /// Decided at or after.
    pub since: Option<DateTime<Utc>>,
    /// Decided before.
    pub until: Option<DateTime<Utc>>,
    /// Resume strictly after this (decided_at, decision_id), newest first.
    pub after: Option<(DateTime<Utc>, String)>,
    /// At most this many.
    pub limit: u32,
}

/// A supervisor's one-call permission.
#[derive(Debug, Clone)]
pub struct Override {
    /// Its id.
    pub id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Case.
    pub case_id: String,
    /// The number's E.164 digits.
    pub number: String,
    /// Why.
    pub reason: String,
    /// Who granted it.
    pub granted_by: String,
    /// When.
    pub granted_at: DateTime<Utc>,
    /// Until when it may be used.
    pub expires_at: DateTime<Utc>,
}

/// The compliance gate's storage.
#[async_trait]
pub trait ComplianceStore: Send + Sync + 'static {
    /// A tenant's policy (`None`: never set, no restriction).
    async fn policy(&self, tenant_id: &str) -> Result<Option<StoredPolicy>, GwError>;
    /// Writes a tenant's policy if its version is still `expected` (0: not set yet); the new
    /// version. `ABORTED` when another change won.
    async fn put_policy(
        &self,
        tenant_id: &str,
        policy: &Policy,
        expected: i64,
        now: DateTime<Utc>,
    ) -> Result<i64, GwError>;
    /// Adds or replaces do-not-call entries.
    async fn put_dnc(&self, entries: &[DncEntry]) -> Result<(), GwError>;
    /// Removes one entry; whether it existed.
    async fn remove_dnc(&self, scope: &str, digits: &str, prefix: bool) -> Result<bool, GwError>;
    /// The unexpired entries of the tenant's and the global list that match `digits` (exact,
    /// or any prefix of it).
    async fn dnc_matches(
        &self,
        tenant_id: &str,
        digits: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<DncEntry>, GwError>;
    /// What the caps of `policy` count for `a` now, without writing (CheckCall).
    async fn facts(&self, a: &Attempt<'_>, policy: &Policy) -> Result<Facts, GwError>;
    /// The gate's atomic step: counts under the rule keys' locks; when nothing refuses (or
    /// `pending` / a cap refuses and `override_id` lets it through), records the attempt and
    /// `decision` (completed with the outcome and counts) in one transaction.
    async fn reserve(
        &self,
        a: &Attempt<'_>,
        policy: &Policy,
        pending: Option<&Refusal>,
        override_id: Option<&str>,
        decision: &Decision,
    ) -> Result<Reserved, GwError>;
    /// Withdraws the attempt of a call that was never sent to Infinity (and gives back the
    /// override it used), noting why on its decision.
    async fn withdraw(&self, tenant_id: &str, call_id: &str, why: &str) -> Result<(), GwError>;
    /// Writes one decision on its own (refusals).
    async fn record_decision(&self, d: &Decision) -> Result<(), GwError>;
    /// Stores an override.
    async fn grant_override(&self, o: &Override) -> Result<(), GwError>;
    /// Decisions newest first.
    async fn decisions(&self, f: &DecisionFilter) -> Result<Vec<Decision>, GwError>;
    /// Deletes decisions decided before `decisions_before`, attempts made before
    /// `attempts_before` and overrides expired before it; how many rows went.
    async fn prune_compliance(
        &self,
        decisions_before: DateTime<Utc>,
        attempts_before: DateTime<Utc>,
    ) -> Result<u64, GwError>;
}

const DNC_COLS: &str = "scope, number, is_prefix, reason, note, expires_at, created_at";
const DECISION_COLS: &str = "decision_id, tenant_id, decided_at, collector_id, case_id, number_masked, outcome, reason, details, call_id, override_id, not_dialled";
/// Entries written per statement.
const DNC_BATCH: usize = 500;

fn dnc_from(r: &Row) -> Result<DncEntry, GwError> {
    let reason = r.text("reason").map_err(db_err)?;
    Ok(DncEntry {
        scope: r.text("scope").map_err(db_err)?,
        digits: r.text("number").map_err(db_err)?,
        prefix: r.bool("is_prefix").map_err(db_err)?,
        reason: DncReason::parse(&reason).ok_or_else(|| corrupt(format!("dnc reason {reason}")))?,
        note: r.text("note").map_err(db_err)?,
        expires_at: r.opt_time("expires_at").map_err(db_err)?,
        created_at: r.time("created_at").map_err(db_err)?,
    })
}

fn decision_from(r: &Row) -> Result<Decision, GwError> {
    let outcome = r.text("outcome").map_err(db_err)?;
    let reason = r.text("reason").map_err(db_err)?;
    let details = r.text("details").map_err(db_err)?;
    Ok(Decision {
        id: r.text("decision_id").map_err(db_err)?,
        tenant_id: r.text("tenant_id").map_err(db_err)?,
        decided_at: r.time("decided_at").map_err(db_err)?,
        collector_id: r.text("collector_id").map_err(db_err)?,
        case_id: r.text("case_id").map_err(db_err)?,
        number_masked: r.text("number_masked").map_err(db_err)?,
        outcome: Outcome::parse(&outcome).ok_or_else(|| corrupt(format!("outcome {outcome}")))?,
        reason: if reason.is_empty() {
            None
        } else {
            Some(Reason::parse(&reason).ok_or_else(|| corrupt(format!("reason {reason}")))?)
        },
        details: serde_json::from_str(&details).map_err(corrupt)?,
        call_id: r.opt_text("call_id").map_err(db_err)?,
        override_id: r.opt_text("override_id").map_err(db_err)?,
        not_dialled: r.opt_text("not_dialled").map_err(db_err)?,
    })
}

/// `$start, $start+1, ...` for `n` values.
fn placeholders(start: usize, n: usize) -> String {
    (start..start + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The rule keys a policy counts under, in lock order.
fn lock_keys(a: &Attempt<'_>, p: &Policy) -> Vec<String> {
    let mut keys = Vec::new();
    if p.case_cap.is_some() || p.case_cooldown_seconds.is_some() {
        keys.push(format!("case:{}", a.case_id));
    }
    if p.collector_cap.is_some() {
        keys.push(format!("collector:{}", a.collector_id));
    }
    if p.number_cap.is_some() {
        keys.push(format!("number:{}", a.number));
    }
    keys.sort();
    keys
}

fn since(now: DateTime<Utc>, secs: u32) -> DateTime<Utc> {
    now.checked_sub_signed(chrono::Duration::seconds(i64::from(secs)))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

impl GatewayStore {
    /// The newest attempts of one rule key inside the cap's window (at most the cap's size).
    async fn attempts_in(
        &self,
        tx: &mut Tx,
        column: &str,
        a: &Attempt<'_>,
        value: &str,
        cap: Cap,
    ) -> Result<Vec<DateTime<Utc>>, GwError> {
        let rows = tx
            .exec()
            .fetch_all(
                &format!(
                    "select attempted_at from dial_attempts \
                     where tenant_id = $1 and {column} = $2 and attempted_at > $3 and call_id <> $5 \
                     order by attempted_at desc limit $4"
                ),
                args![
                    a.tenant_id,
                    value,
                    since(a.at, cap.window_seconds),
                    i64::from(cap.max_attempts),
                    a.call_id
                ],
            )
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| r.time("attempted_at").map_err(db_err))
            .collect()
    }

    async fn count_in(&self, tx: &mut Tx, a: &Attempt<'_>, p: &Policy) -> Result<Facts, GwError> {
        let mut f = Facts::default();
        if let Some(c) = p.case_cap {
            f.case = self.attempts_in(tx, "case_id", a, a.case_id, c).await?;
        }
        if let Some(c) = p.number_cap {
            f.number = self.attempts_in(tx, "number", a, a.number, c).await?;
        }
        if let Some(c) = p.collector_cap {
            f.collector = self
                .attempts_in(tx, "collector_id", a, a.collector_id, c)
                .await?;
        }
        if let Some(secs) = p.case_cooldown_seconds {
            // In one statement (one snapshot: a call completing between two statements would
            // be seen neither open nor connected): the newest conversation about the case; the
            // case's calls still open (one may be a conversation Infinity has not reported
            // yet); and the attempts counted under these locks moments ago whose record is not
            // written yet (a racing MakeCall). An attempt whose record never came (a gateway
            // killed in between) stops counting after ten minutes.
            let row = tx
                .exec()
                .fetch_one(
                    "select (select max(coalesce(end_time, answer_time, updated_at)) \
                     from communication_records \
                     where tenant_id = $1 and case_id = $2 and result = 'connected') as t, \
                     (select count(*) from communication_records \
                     where tenant_id = $1 and case_id = $2 and status in ('dialing', 'ringing', 'unknown')) \
                     + (select count(*) from dial_attempts a \
                     where a.tenant_id = $1 and a.case_id = $2 and a.attempted_at > $3 and a.call_id <> $4 \
                     and not exists (select 1 from communication_records c where c.call_id = a.call_id)) as n",
                    args![a.tenant_id, a.case_id, since(a.at, 600), a.call_id],
                )
                .await
                .map_err(db_err)?;
            f.last_connected = row
                .opt_time("t")
                .map_err(db_err)?
                .filter(|t| *t > since(a.at, secs));
            f.open_calls = u32::try_from(row.i64("n").map_err(db_err)?).unwrap_or(u32::MAX);
        }
        Ok(f)
    }

    /// Locks the rule keys in order; false when a key has no row yet.
    async fn lock_keys(
        &self,
        tx: &mut Tx,
        tenant_id: &str,
        keys: &[String],
    ) -> Result<bool, GwError> {
        if keys.is_empty() {
            return Ok(true);
        }
        let mut a: Vec<Arg<'_>> = vec![tenant_id.into()];
        a.extend(keys.iter().map(Arg::from));
        if self.db.backend() != Backend::MySql {
            // PostgreSQL and SQLite: one upsert creates the missing rows and locks every one,
            // in key order (a racing insert of the same key waits for this transaction). Its
            // update never happens (`where false`): PostgreSQL locks the existing rows all the
            // same and writes no new row versions.
            let rows = (0..keys.len())
                .map(|i| format!("($1, ${})", i + 2))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "insert into compliance_locks (tenant_id, lock_key) values {rows} \
                 on conflict (tenant_id, lock_key) do update set lock_key = excluded.lock_key where false"
            );
            tx.exec().execute(&sql, &a).await.map_err(db_err)?;
            return Ok(true);
        }
        // MySQL: a racing insert takes gap locks that deadlock, so missing rows are created
        // apart (`create_keys`) and the existing ones locked here.
        let sql = format!(
            "select lock_key from compliance_locks where tenant_id = $1 and lock_key in ({}) order by lock_key{}",
            placeholders(2, keys.len()),
            self.db.dialect().for_update()
        );
        let rows = tx.exec().fetch_all(&sql, &a).await.map_err(db_err)?;
        Ok(rows.len() == keys.len())
    }

    async fn create_keys(&self, tenant_id: &str, keys: &[String]) -> Result<(), GwError> {
        let rows = (0..keys.len())
            .map(|i| format!("($1, ${})", i + 2))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = self.db.dialect().insert_or_ignore(
            "compliance_locks",
            "tenant_id, lock_key",
            &rows,
            "tenant_id, lock_key",
        );
        let mut a: Vec<Arg<'_>> = vec![tenant_id.into()];
        a.extend(keys.iter().map(Arg::from));
        // Racing first gates of one key may deadlock on MySQL's duplicate-key locks.
        cco_platform::sql::retry(contended, || async {
            self.db.execute(&sql, &a).await.map_err(db_err)
        })
        .await?;
        Ok(())
    }

    async fn insert_decision(&self, tx: &mut Tx, d: &Decision) -> Result<(), GwError> {
        let details = serde_json::to_string(&d.details).map_err(|e| GwError::Internal(e.into()))?;
        tx.exec()
            .execute(
                &format!(
                    "insert into compliance_decisions ({DECISION_COLS}) \
                     values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
                ),
                args![
                    &d.id,
                    &d.tenant_id,
                    d.decided_at,
                    &d.collector_id,
                    &d.case_id,
                    &d.number_masked,
                    d.outcome.as_str(),
                    d.reason.map_or("", |r| r.as_str()),
                    &details,
                    &d.call_id,
                    &d.override_id,
                    &d.not_dialled
                ],
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// Writes a deferred attempt and its decision in `tx` (the call record's transaction).
    pub(crate) async fn write_gate(&self, tx: &mut Tx, g: &GateRecord) -> Result<(), GwError> {
        self.insert_attempt(
            tx,
            &Attempt {
                tenant_id: &g.tenant_id,
                call_id: &g.call_id,
                case_id: &g.case_id,
                number: &g.number,
                collector_id: &g.collector_id,
                at: g.at,
            },
        )
        .await
        .map_err(db_err)?;
        self.insert_decision(tx, &g.decision).await
    }

    async fn insert_attempt(&self, tx: &mut Tx, a: &Attempt<'_>) -> Result<u64, sqlx::Error> {
        tx.exec()
            .execute(
                "insert into dial_attempts (tenant_id, call_id, case_id, number, collector_id, attempted_at) \
                 values ($1, $2, $3, $4, $5, $6)",
                args![
                    a.tenant_id,
                    a.call_id,
                    a.case_id,
                    a.number,
                    a.collector_id,
                    a.at
                ],
            )
            .await
    }

    /// One run of [`ComplianceStore::reserve`]; `None` when a key's lock row must be created
    /// first.
    async fn try_reserve(
        &self,
        a: &Attempt<'_>,
        p: &Policy,
        keys: &[String],
        pending: Option<&Refusal>,
        override_id: Option<&str>,
        decision: &Decision,
    ) -> Result<Option<Reserved>, GwError> {
        let mut tx = self.db.begin(Mode::Write).await.map_err(db_err)?;
        if !self.lock_keys(&mut tx, a.tenant_id, keys).await? {
            tx.rollback().await.map_err(db_err)?;
            return Ok(None);
        }
        let facts = self.count_in(&mut tx, a, p).await?;
        let mut d = decision.clone();
        // The counts run whatever refused before them, so an override of the hours is not
        // also, silently, one of the caps: every rule that refuses is named.
        let refusal = match (pending, p.check_counts(&facts, a.at)) {
            (None, Ok(counts)) => {
                d.details.extend(counts);
                None
            }
            (None, Err(r)) => Some(r),
            (Some(r), Ok(counts)) => {
                d.details.extend(counts);
                Some(r.clone())
            }
            (Some(r), Err(also)) => Some(r.clone().and(also)),
        };
        let mut result = Reserved::Allowed;
        if let Some(r) = refusal {
            let granted = match override_id {
                Some(id)
                    if r.reason.overridable()
                        && !r.metadata.get("also_refused_by").is_some_and(|x| {
                            Reason::parse(x).is_some_and(|x| !x.overridable())
                        }) =>
                {
                    let used = tx
                        .exec()
                        .execute(
                            "update compliance_overrides set used_call_id = $1, used_at = $2 \
                             where override_id = $3 and tenant_id = $4 and case_id = $5 and number = $6 \
                             and (used_call_id is null or used_call_id = $1) and expires_at > $2",
                            args![a.call_id, a.at, id, a.tenant_id, a.case_id, a.number],
                        )
                        .await
                        .map_err(db_err)?;
                    if used == 1 {
                        tx.exec()
                            .fetch_optional(
                                "select granted_by, reason from compliance_overrides where override_id = $1",
                                args![id],
                            )
                            .await
                            .map_err(db_err)?
                    } else {
                        None
                    }
                }
                _ => None,
            };
            let Some(grant) = granted else {
                tx.rollback().await.map_err(db_err)?;
                return Ok(Some(Reserved::Refused {
                    refusal: r,
                    override_unusable: override_id.is_some(),
                }));
            };
            d.outcome = Outcome::Overridden;
            d.reason = Some(r.reason);
            d.details
                .extend(r.metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
            // Kept with the decision: the override's own row goes 33 days after it expires.
            d.details.insert(
                "override_granted_by".into(),
                grant.text("granted_by").map_err(db_err)?,
            );
            d.details.insert(
                "override_reason".into(),
                grant.text("reason").map_err(db_err)?,
            );
            d.override_id = override_id.map(str::to_owned);
            result = Reserved::Overridden(r);
        }
        // One attempt per call id: an identical request racing this one (same idempotency
        // key) is the same attempt, counted and audited by whichever commits first.
        let inserted = self.insert_attempt(&mut tx, a).await;
        match inserted {
            Ok(_) => {}
            Err(e) if cco_platform::db::is_unique_violation(&e) => {
                tx.rollback().await.map_err(db_err)?;
                return Ok(Some(Reserved::Duplicate));
            }
            Err(e) => return Err(db_err(e)),
        }
        self.insert_decision(&mut tx, &d).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(Some(result))
    }
}

fn contended(e: &GwError) -> bool {
    matches!(e, GwError::Contention(_))
}

#[async_trait]
impl ComplianceStore for GatewayStore {
    async fn policy(&self, tenant_id: &str) -> Result<Option<StoredPolicy>, GwError> {
        let Some(r) = self
            .db
            .fetch_optional(
                "select policy, version, updated_at from compliance_policies where tenant_id = $1",
                args![tenant_id],
            )
            .await
            .map_err(db_err)?
        else {
            return Ok(None);
        };
        let mut policy: Policy =
            serde_json::from_str(&r.text("policy").map_err(db_err)?).map_err(corrupt)?;
        policy
            .validate()
            .map_err(|e| corrupt(format!("compliance policy of {tenant_id}: {e}")))?;
        Ok(Some(StoredPolicy {
            policy,
            version: r.i64("version").map_err(db_err)?,
            updated_at: r.time("updated_at").map_err(db_err)?,
        }))
    }

    async fn put_policy(
        &self,
        tenant_id: &str,
        policy: &Policy,
        expected: i64,
        now: DateTime<Utc>,
    ) -> Result<i64, GwError> {
        let json = serde_json::to_string(policy).map_err(|e| GwError::Internal(e.into()))?;
        let next = expected
            .checked_add(1)
            .ok_or_else(|| GwError::invalid("expected_version", "out of range"))?;
        let changed = if expected == 0 {
            match self
                .write_bumping(
                    "insert into compliance_policies (tenant_id, policy, version, updated_at) \
                     values ($1, $2, 1, $3)",
                    args![tenant_id, &json, now],
                )
                .await
            {
                Ok(n) => n == 1,
                Err(e) if cco_platform::db::is_unique_violation(&e) => false,
                Err(e) => return Err(db_err(e)),
            }
        } else {
            self.write_bumping(
                "update compliance_policies set policy = $1, version = $2, updated_at = $3 \
                 where tenant_id = $4 and version = $5",
                args![&json, next, now, tenant_id, expected],
            )
            .await
            .map_err(db_err)?
                == 1
        };
        if changed {
            Ok(next)
        } else {
            Err(GwError::Aborted(format!(
                "expected_version: the policy of tenant {tenant_id} is no longer at version {expected}; read it again"
            )))
        }
    }

    async fn put_dnc(&self, entries: &[DncEntry]) -> Result<(), GwError> {
        // One row per key and statement (PostgreSQL refuses to upsert a row twice in one
        // statement): a repeated entry, the last one wins.
        let mut last = std::collections::HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            last.insert((e.scope.as_str(), e.digits.as_str(), e.prefix), i);
        }
        let entries: Vec<&DncEntry> = entries
            .iter()
            .enumerate()
            .filter(|(i, e)| last.get(&(e.scope.as_str(), e.digits.as_str(), e.prefix)) == Some(i))
            .map(|(_, e)| e)
            .collect();
        for chunk in entries.chunks(DNC_BATCH) {
            let rows = (0..chunk.len())
                .map(|i| format!("({})", placeholders(i * 7 + 1, 7)))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = self.db.dialect().upsert(
                "dnc_entries",
                DNC_COLS,
                &rows,
                "scope, number, is_prefix",
                "reason = new(reason), note = new(note), expires_at = new(expires_at), created_at = new(created_at)",
            );
            let mut a: Vec<Arg<'_>> = Vec::with_capacity(chunk.len() * 7);
            for e in chunk {
                a.extend([
                    Arg::from(e.scope.as_str()),
                    Arg::from(e.digits.as_str()),
                    Arg::from(e.prefix),
                    Arg::from(e.reason.as_str()),
                    Arg::from(e.note.as_str()),
                    Arg::from(e.expires_at),
                    Arg::from(e.created_at),
                ]);
            }
            cco_platform::sql::retry(contended, || async {
                self.db.execute(&sql, &a).await.map_err(db_err)
            })
            .await?;
        }
        Ok(())
    }

    async fn remove_dnc(&self, scope: &str, digits: &str, prefix: bool) -> Result<bool, GwError> {
        let n = self
            .db
            .execute(
                "delete from dnc_entries where scope = $1 and number = $2 and is_prefix = $3",
                args![scope, digits, prefix],
            )
            .await
            .map_err(db_err)?;
        Ok(n > 0)
    }

    async fn dnc_matches(
        &self,
        tenant_id: &str,
        digits: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<DncEntry>, GwError> {
        let candidates = prefixes(digits);
        let sql = format!(
            "select {DNC_COLS} from dnc_entries \
             where scope in ($1, '*') and number in ({}) and (expires_at is null or expires_at > $2)",
            placeholders(3, candidates.len())
        );
        let mut a: Vec<Arg<'_>> = vec![tenant_id.into(), now.into()];
        a.extend(candidates.iter().map(|c| Arg::from(*c)));
        let rows = self.db.fetch_all(&sql, &a).await.map_err(db_err)?;
        let mut out = Vec::new();
        for r in &rows {
            let e = dnc_from(r)?;
            if e.prefix || e.digits == digits {
                out.push(e);
            }
        }
        Ok(out)
    }

    async fn facts(&self, a: &Attempt<'_>, policy: &Policy) -> Result<Facts, GwError> {
        if !policy.counts() {
            return Ok(Facts::default());
        }
        let mut tx = self.db.begin(Mode::Read).await.map_err(db_err)?;
        let f = self.count_in(&mut tx, a, policy).await;
        tx.rollback().await.map_err(db_err)?;
        f
    }

    async fn reserve(
        &self,
        a: &Attempt<'_>,
        policy: &Policy,
        pending: Option<&Refusal>,
        override_id: Option<&str>,
        decision: &Decision,
    ) -> Result<Reserved, GwError> {
        let keys = lock_keys(a, policy);
        for _ in 0..3 {
            let run = cco_platform::sql::retry(contended, || {
                self.try_reserve(a, policy, &keys, pending, override_id, decision)
            })
            .await?;
            match run {
                Some(r) => return Ok(r),
                None => self.create_keys(a.tenant_id, &keys).await?,
            }
        }
        Err(GwError::Internal(anyhow::anyhow!(
            "compliance lock rows missing after creating them"
        )))
    }

    async fn withdraw(&self, tenant_id: &str, call_id: &str, why: &str) -> Result<(), GwError> {
        cco_platform::sql::retry(contended, || async {
            let mut tx = self.db.begin(Mode::Write).await.map_err(db_err)?;
            let e = tx.exec();
            e.execute(
                "delete from dial_attempts where tenant_id = $1 and call_id = $2",
                args![tenant_id, call_id],
            )
            .await
            .map_err(db_err)?;
            tx.exec()
                .execute(
                    "update compliance_decisions set not_dialled = $1 \
                     where tenant_id = $2 and call_id = $3 and outcome <> 'refused'",
                    args![why, tenant_id, call_id],
                )
                .await
                .map_err(db_err)?;
            tx.exec()
                .execute(
                    "update compliance_overrides set used_call_id = null, used_at = null \
                     where tenant_id = $1 and used_call_id = $2",
                    args![tenant_id, call_id],
                )
                .await
                .map_err(db_err)?;
            tx.commit().await.map_err(db_err)
        })
        .await
    }

    async fn record_decision(&self, d: &Decision) -> Result<(), GwError> {
        let mut tx = self.db.begin(Mode::Write).await.map_err(db_err)?;
        self.insert_decision(&mut tx, d).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn grant_override(&self, o: &Override) -> Result<(), GwError> {
        self.db
            .execute(
                "insert into compliance_overrides (override_id, tenant_id, case_id, number, reason, granted_by, granted_at, expires_at) \
                 values ($1, $2, $3, $4, $5, $6, $7, $8)",
                args![
                    &o.id,
                    &o.tenant_id,
                    &o.case_id,
                    &o.number,
                    &o.reason,
                    &o.granted_by,
                    o.granted_at,
                    o.expires_at
                ],
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn decisions(&self, f: &DecisionFilter) -> Result<Vec<Decision>, GwError> {
        let mut sql =
            format!("select {DECISION_COLS} from compliance_decisions where tenant_id = $1");
        let mut a: Vec<Arg<'_>> = vec![f.tenant_id.as_str().into()];
        let mut conds: Vec<(&str, Arg<'_>)> = Vec::new();
        if let Some(c) = &f.collector_id {
            conds.push(("collector_id =", c.as_str().into()));
        }
        if let Some(c) = &f.case_id {
            conds.push(("case_id =", c.as_str().into()));
        }
        if let Some(o) = f.outcome {
            conds.push(("outcome =", o.as_str().into()));
        }
        if let Some(r) = f.reason {
            conds.push(("reason =", r.as_str().into()));
        }
        if let Some(t) = f.since {
            conds.push(("decided_at >=", t.into()));
        }
        if let Some(t) = f.until {
            conds.push(("decided_at <", t.into()));
        }
        for (c, v) in conds {
            a.push(v);
            sql.push_str(&format!(" and {c} ${}", a.len()));
        }
        if let Some((t, id)) = &f.after {
            let n = a.len();
            sql.push_str(&format!(
                " and (decided_at < ${t} or (decided_at = ${t} and decision_id < ${i}))",
                t = n + 1,
                i = n + 2
            ));
            a.push((*t).into());
            a.push(id.as_str().into());
        }
        sql.push_str(&format!(
            " order by decided_at desc, decision_id desc limit {}",
            f.limit
        ));
        let rows = self.db.fetch_all(&sql, &a).await.map_err(db_err)?;
        rows.iter().map(decision_from).collect()
    }

    async fn prune_compliance(
        &self,
        decisions_before: DateTime<Utc>,
        attempts_before: DateTime<Utc>,
    ) -> Result<u64, GwError> {
        let mut n = 0;
        for (sql, at) in [
            (
                "delete from compliance_decisions where decided_at < $1",
                decisions_before,
            ),
            (
                "delete from dial_attempts where attempted_at < $1",
                attempts_before,
            ),
            (
                "delete from compliance_overrides where expires_at < $1",
                attempts_before,
            ),
            (
                "delete from dnc_entries where expires_at < $1",
                attempts_before,
            ),
        ] {
            n += self.db.execute(sql, args![at]).await.map_err(db_err)?;
        }
        Ok(n)
    }
}
