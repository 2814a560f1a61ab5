//! The `compliance` commands: policies and presets, do-not-call lists, overrides, decisions.

use std::io::Read;

use cco_contracts::gateway::v1 as gpb;
use clap::{Subcommand, ValueEnum};

use crate::client::Target;
use crate::output::{Out, line};

/// Why a number is on a do-not-call list.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DncReasonArg {
    CeaseContact,
    WrongNumber,
    AttorneyRepresented,
    Complaint,
}

fn dnc_reason(r: DncReasonArg) -> i32 {
    (match r {
        DncReasonArg::CeaseContact => gpb::DoNotCallReason::CeaseContact,
        DncReasonArg::WrongNumber => gpb::DoNotCallReason::WrongNumber,
        DncReasonArg::AttorneyRepresented => gpb::DoNotCallReason::AttorneyRepresented,
        DncReasonArg::Complaint => gpb::DoNotCallReason::Complaint,
    }) as i32
}

/// `cco compliance ...`.
#[derive(Debug, Subcommand)]
pub enum ComplianceCmd {
    /// Shows a tenant's policy (`--json` prints the form `set` reads).
    Show {
        #[arg(long)]
        tenant: String,
    },
    /// Sets a tenant's policy from a preset (us_reg_f, mx_condusef, id_ojk): a starting point
    /// from the rules it names, not legal advice.
    Preset {
        #[arg(long)]
        tenant: String,
        /// us_reg_f, mx_condusef or id_ojk.
        #[arg(long)]
        name: String,
        /// The tenant's default IANA zone instead of the preset's.
        #[arg(long)]
        zone: Option<String>,
        /// Let supervisors grant one-call overrides.
        #[arg(long)]
        allow_overrides: bool,
    },
    /// Sets a tenant's policy from a JSON file (CompliancePolicy in the proto3 JSON mapping, as
    /// `show --json` prints it; `-` reads stdin).
    Set {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        file: String,
    },
    /// Removes every rule of a tenant's policy.
    Clear {
        #[arg(long)]
        tenant: String,
    },
    /// Do-not-call lists.
    #[command(subcommand)]
    Dnc(DncCmd),
    /// Grants a one-call override of a refusal (supervisors and admins; where the policy
    /// allows overrides). Pass the printed id to `cco call make --override`.
    Override {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        case: String,
        /// The debtor's number.
        #[arg(long)]
        to: String,
        /// Why (audited).
        #[arg(long)]
        reason: String,
        /// How long it may be used.
        #[arg(long, default_value_t = 3_600)]
        valid_seconds: u32,
    },
    /// The gate's decisions, newest first.
    Decisions {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        collector: Option<String>,
        #[arg(long)]
        case: Option<String>,
        /// allowed, refused or overridden.
        #[arg(long)]
        outcome: Option<String>,
        /// OUTSIDE_CALLING_HOURS, HOLIDAY, FREQUENCY_CAP, CASE_COOLDOWN, DO_NOT_CALL or
        /// NUMBER_TYPE_BLOCKED.
        #[arg(long)]
        reason: Option<String>,
        /// At most this many (1-500).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

/// `cco compliance dnc ...`.
#[derive(Debug, Subcommand)]
pub enum DncCmd {
    /// Adds (or replaces) an entry.
    Add {
        /// The tenant, or `*` for the global list (admin keys valid for every tenant).
        #[arg(long)]
        tenant: String,
        /// The number, or with --prefix an international prefix such as +1900.
        #[arg(long)]
        number: String,
        #[arg(long)]
        prefix: bool,
        #[arg(long, value_enum)]
        reason: DncReasonArg,
        #[arg(long, default_value = "")]
        note: String,
        /// When it stops applying (RFC 3339).
        #[arg(long)]
        expires: Option<String>,
    },
    /// Removes an entry.
    Remove {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        number: String,
        #[arg(long)]
        prefix: bool,
    },
    /// Shows the entries that list a number for a tenant.
    Check {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        number: String,
    },
    /// Imports a file of `number[,reason[,expires_at[,note]]]` lines (a prefix ends in `*`;
    /// `-` reads stdin), streamed in chunks; prints the lines refused.
    Import {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        file: String,
        /// The reason of lines that give none.
        #[arg(long, value_enum)]
        default_reason: Option<DncReasonArg>,
        /// Lines per chunk of the stream.
        #[arg(long, default_value_t = 5_000)]
        chunk: usize,
    },
}

fn read_input(file: &str) -> anyhow::Result<String> {
    let mut text = String::new();
    if file == "-" {
        std::io::stdin().read_to_string(&mut text)?;
    } else {
        text = std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("--file {file}: {e}"))?;
    }
    Ok(text)
}

fn timestamp(field: &str, s: &str) -> anyhow::Result<cco_contracts::pbjson_types::Timestamp> {
    let t = chrono::DateTime::parse_from_rfc3339(s)
        .map_err(|e| anyhow::anyhow!("--{field} {s:?}: not an RFC 3339 time ({e})"))?;
    Ok(cco_contracts::time::to_timestamp(
        t.with_timezone(&chrono::Utc),
    ))
}

/// Runs a `cco compliance` command.
pub async fn compliance(cmd: ComplianceCmd, t: &Target, out: Out) -> anyhow::Result<()> {
    let mut c = t.compliance()?;
    match cmd {
        ComplianceCmd::Show { tenant } => out.one(
            &c.get_policy(gpb::GetCompliancePolicyRequest { tenant_id: tenant })
                .await?
                .into_inner(),
        ),
        ComplianceCmd::Preset {
            tenant,
            name,
            zone,
            allow_overrides,
        } => {
            let mut p = c
                .get_preset(gpb::GetPresetRequest {
                    name,
                    tenant_id: tenant.clone(),
                })
                .await?
                .into_inner();
            if let Some(z) = zone {
                p.default_time_zone = z;
            }
            p.allow_overrides = allow_overrides;
            out.one(&replace(&mut c, p).await?)
        }
        ComplianceCmd::Set { tenant, file } => {
            let mut p: gpb::CompliancePolicy = serde_json::from_str(&read_input(&file)?)
                .map_err(|e| anyhow::anyhow!("--file {file}: not a CompliancePolicy ({e})"))?;
            p.tenant_id = tenant;
            out.one(&replace(&mut c, p).await?)
        }
        ComplianceCmd::Clear { tenant } => {
            let p = gpb::CompliancePolicy {
                tenant_id: tenant,
                ..Default::default()
            };
            out.one(&replace(&mut c, p).await?)
        }
        ComplianceCmd::Dnc(d) => dnc(&mut c, d, out).await,
        ComplianceCmd::Override {
            tenant,
            case,
            to,
            reason,
            valid_seconds,
        } => out.one(
            &c.grant_override(gpb::GrantOverrideRequest {
                tenant_id: tenant,
                case_id: case,
                destination_number: to,
                reason,
                valid_seconds,
            })
            .await?
            .into_inner(),
        ),
        ComplianceCmd::Decisions {
            tenant,
            collector,
            case,
            outcome,
            reason,
            limit,
        } => {
            let r = c
                .list_compliance_decisions(gpb::ListComplianceDecisionsRequest {
                    tenant_id: tenant,
                    collector_id: collector.unwrap_or_default(),
                    case_id: case.unwrap_or_default(),
                    outcome: outcome.unwrap_or_default(),
                    reason: reason.unwrap_or_default(),
                    page_size: limit,
                    ..Default::default()
                })
                .await?
                .into_inner();
            out.table(
                &r.decisions,
                &[
                    ("decided_at", "decided_at"),
                    ("outcome", "outcome"),
                    ("reason", "reason"),
                    ("collector", "collector_id"),
                    ("case", "case_id"),
                    ("number", "number_masked"),
                    ("call_id", "call_id"),
                ],
            )
        }
    }
}

type Client = gpb::compliance_policies_client::CompliancePoliciesClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        cco_platform::auth::BearerInterceptor,
    >,
>;

/// Replaces the tenant's policy with `p`, at the version it has now.
async fn replace(
    c: &mut Client,
    p: gpb::CompliancePolicy,
) -> anyhow::Result<gpb::CompliancePolicy> {
    let current = c
        .get_policy(gpb::GetCompliancePolicyRequest {
            tenant_id: p.tenant_id.clone(),
        })
        .await?
        .into_inner();
    Ok(c.set_policy(gpb::SetCompliancePolicyRequest {
        policy: Some(p),
        expected_version: current.version,
    })
    .await?
    .into_inner())
}

async fn dnc(c: &mut Client, cmd: DncCmd, out: Out) -> anyhow::Result<()> {
    match cmd {
        DncCmd::Add {
            tenant,
            number,
            prefix,
            reason,
            note,
            expires,
        } => out.one(
            &c.add_do_not_call(gpb::AddDoNotCallRequest {
                entry: Some(gpb::DoNotCallEntry {
                    tenant_id: tenant,
                    number,
                    prefix,
                    reason: dnc_reason(reason),
                    note,
                    expires_at: expires.map(|e| timestamp("expires", &e)).transpose()?,
                    created_at: None,
                }),
            })
            .await?
            .into_inner(),
        ),
        DncCmd::Remove {
            tenant,
            number,
            prefix,
        } => out.one(
            &c.remove_do_not_call(gpb::RemoveDoNotCallRequest {
                tenant_id: tenant,
                number,
                prefix,
            })
            .await?
            .into_inner(),
        ),
        DncCmd::Check { tenant, number } => out.one(
            &c.check_do_not_call(gpb::CheckDoNotCallRequest {
                tenant_id: tenant,
                number,
            })
            .await?
            .into_inner(),
        ),
        DncCmd::Import {
            tenant,
            file,
            default_reason,
            chunk,
        } => {
            let text = read_input(&file)?;
            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
            let chunk = chunk.clamp(1, 50_000);
            let mut first = true;
            let chunks: Vec<gpb::ImportDoNotCallRequest> = lines
                .chunks(chunk)
                .map(|l| {
                    let req = gpb::ImportDoNotCallRequest {
                        tenant_id: if first { tenant.clone() } else { String::new() },
                        lines: l.to_vec(),
                        default_reason: default_reason.map_or(0, dnc_reason),
                    };
                    first = false;
                    req
                })
                .collect();
            let r = c
                .import_do_not_call(tokio_stream::iter(chunks))
                .await?
                .into_inner();
            if out.json {
                return out.one(&r);
            }
            if !r.errors.is_empty() {
                out.table(&r.errors, &[("line", "line"), ("error", "error")])?;
                line("")?;
            }
            line(&format!("accepted {}, rejected {}", r.accepted, r.rejected))
        }
    }
}
