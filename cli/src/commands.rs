//! The `config`, `ext`, `collector`, `call` and `compliance` commands.

use std::collections::HashMap;
use std::io::Read;
use std::time::Duration;

use cco_contracts::allocator::v1 as apb;
use cco_contracts::gateway::v1 as gpb;
use clap::{Args, Subcommand, ValueEnum};

use crate::client::Target;
use crate::output::{Out, line};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Mode {
    DoubleCall,
    MakeCall,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StrategyArg {
    Lru,
    RoundRobin,
    CollectorAffinity,
}

/// A costly destination number type a tenant may allow.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum NumberTypeArg {
    PremiumRate,
    Satellite,
    InternationalNetwork,
    PersonalNumber,
}

fn number_type(t: NumberTypeArg) -> i32 {
    match t {
        NumberTypeArg::PremiumRate => gpb::NumberType::PremiumRate as i32,
        NumberTypeArg::Satellite => gpb::NumberType::Satellite as i32,
        NumberTypeArg::InternationalNetwork => gpb::NumberType::InternationalNetwork as i32,
        NumberTypeArg::PersonalNumber => gpb::NumberType::PersonalNumber as i32,
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Selection {
    DefaultNumber,
    RoundRobin,
    Random,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExtStatusArg {
    Available,
    InUse,
    Offline,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CallStatusArg {
    Dialing,
    Ringing,
    Unknown,
    Completed,
    Failed,
    Expired,
}

/// A call result (`call list --result`).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CallResultArg {
    Connected,
    NoAnswer,
    Busy,
    Rejected,
    Cancelled,
    Failed,
    NotConnected,
}

fn strategy(s: StrategyArg) -> gpb::AllocationStrategy {
    match s {
        StrategyArg::Lru => gpb::AllocationStrategy::Lru,
        StrategyArg::RoundRobin => gpb::AllocationStrategy::RoundRobin,
        StrategyArg::CollectorAffinity => gpb::AllocationStrategy::CollectorAffinity,
    }
}

/// Settings shared by `config create` and `config update`.
#[derive(Debug, Args)]
pub struct ConfigFlags {
    /// The Infinity API URL.
    #[arg(long)]
    api_url: Option<String>,
    /// A static access token.
    #[arg(long, conflicts_with_all = ["app_id", "access_key"])]
    token: Option<String>,
    /// App id for App.Sip_Auth.Login (with --access-key).
    #[arg(long, requires = "access_key")]
    app_id: Option<String>,
    /// Access key for App.Sip_Auth.Login (with --app-id).
    #[arg(long, requires = "app_id")]
    access_key: Option<String>,
    /// A caller number of the pool (repeat for several).
    #[arg(long = "caller-number")]
    caller_numbers: Vec<String>,
    /// The default caller number (must be in the pool).
    #[arg(long)]
    default_caller_number: Option<String>,
    /// How caller numbers are picked.
    #[arg(long, value_enum)]
    selection: Option<Selection>,
    /// double-call (ring the collector first) or make-call (ring the extension first).
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Digits prepended to destinations.
    #[arg(long)]
    prefix: Option<String>,
    /// Supplier id.
    #[arg(long)]
    supplier: Option<String>,
    /// Most calls at once (1-10000).
    #[arg(long)]
    max_concurrent_calls: Option<u32>,
    /// Ring timeout in seconds (10-300).
    #[arg(long)]
    call_timeout: Option<u32>,
    /// Infinity request timeout in milliseconds (500-60000).
    #[arg(long)]
    api_timeout_ms: Option<u32>,
    /// Default allocation strategy.
    #[arg(long, value_enum)]
    strategy: Option<StrategyArg>,
    /// Lease TTL in seconds (10-86400).
    #[arg(long)]
    lease_ttl: Option<u32>,
    /// Rest after a release, in seconds (0-3600).
    #[arg(long)]
    cooldown: Option<u32>,
    /// The callback secret (16-128 URL-safe characters; generated on create when absent).
    #[arg(long)]
    callback_secret: Option<String>,
    /// A CIDR callbacks may come from (repeat for several).
    #[arg(long = "allow-ip")]
    allow_ip: Vec<String>,
    /// IANA zone of Infinity's timestamps.
    #[arg(long)]
    time_zone: Option<String>,
    /// Region for numbers without a country code (CN, MX, ...).
    #[arg(long)]
    region: Option<String>,
    /// A costly number type the tenant may dial (repeat for several; refused by default).
    #[arg(long = "allow-number-type", value_enum)]
    allow_number_types: Vec<NumberTypeArg>,
}

impl ConfigFlags {
    fn credentials(&self) -> Option<gpb::Credentials> {
        if let Some(t) = &self.token {
            return Some(gpb::Credentials {
                kind: Some(gpb::credentials::Kind::AccessToken(t.clone())),
            });
        }
        match (&self.app_id, &self.access_key) {
            (Some(a), Some(k)) => Some(gpb::Credentials {
                kind: Some(gpb::credentials::Kind::App(gpb::AppCredentials {
                    app_id: a.clone(),
                    access_key: k.clone(),
                })),
            }),
            _ => None,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Creates a tenant's config.
    Create {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        flags: ConfigFlags,
        /// Create it switched off.
        #[arg(long)]
        inactive: bool,
    },
    /// Shows a config (by tenant or by id).
    Get {
        #[arg(long, required_unless_present = "id")]
        tenant: Option<String>,
        #[arg(long)]
        id: Option<String>,
    },
    /// Changes the given fields (the current version is read first unless --version is given).
    Update {
        #[arg(long)]
        tenant: String,
        /// The version you read; refused if someone changed it since.
        #[arg(long)]
        version: Option<u64>,
        #[command(flatten)]
        flags: ConfigFlags,
        /// Generate a new callback secret (shown once).
        #[arg(long)]
        regenerate_callback_secret: bool,
    },
    /// Switches a config on or off.
    Toggle {
        #[arg(long)]
        tenant: String,
    },
    /// Deletes a config (refused while calls are live unless --force).
    Delete {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        force: bool,
    },
    /// Tests the connection to the tenant's Infinity (never dials).
    Test {
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ExtCmd {
    /// Imports extension numbers, one per line, from a file or stdin ("-").
    Import {
        #[arg(long)]
        tenant: String,
        /// The tenant's config id (default: the config's).
        #[arg(long, default_value = "")]
        config_id: String,
        /// The file; "-" or absent reads stdin.
        file: Option<String>,
    },
    /// Lists extensions (all pages).
    List {
        #[arg(long)]
        tenant: String,
        #[arg(long, value_enum)]
        status: Option<ExtStatusArg>,
        #[arg(long)]
        collector: Option<String>,
        #[arg(long)]
        config_id: Option<String>,
    },
    /// Pool statistics (with --usage: per-extension use over the last 24 h).
    Stats {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        usage: bool,
    },
    /// Frees an extension by hand.
    Release {
        #[arg(long)]
        tenant: String,
        /// The extension id.
        #[arg(long)]
        id: String,
    },
    /// Deletes extensions (refused while in use unless --force).
    Delete {
        #[arg(long)]
        tenant: String,
        /// Extension ids.
        #[arg(long = "id", required = true)]
        ids: Vec<String>,
        #[arg(long)]
        force: bool,
    },
    /// Frees every live lease of a collector.
    ForceReleaseCollector {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        collector: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum CollectorCmd {
    /// Creates or replaces a collector.
    Set {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
        /// The collector's own phone (DoubleCall rings it first).
        #[arg(long, default_value = "")]
        callback_number: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long)]
        inactive: bool,
    },
    /// Shows a collector.
    Get {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
    },
    /// Lists a tenant's collectors (all pages).
    List {
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum CallCmd {
    /// Places a call.
    Make {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        collector: String,
        #[arg(long)]
        case: String,
        /// The debtor's number.
        #[arg(long)]
        to: String,
        #[arg(long)]
        caller_number: Option<String>,
        /// Idempotency key: retrying with it never dials twice.
        #[arg(long)]
        key: Option<String>,
        /// A custom parameter key=value (repeat for several).
        #[arg(long = "param")]
        params: Vec<String>,
        #[arg(long, value_enum)]
        strategy: Option<StrategyArg>,
        /// The debtor's IANA time zone from the case (when the number's country has several).
        #[arg(long)]
        debtor_zone: Option<String>,
        /// A supervisor's override id (`cco compliance override`) for a refused call.
        #[arg(long = "override")]
        override_id: Option<String>,
    },
    /// Asks the compliance gate whether a call would be placed now (nothing is dialled).
    Check {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        collector: String,
        #[arg(long)]
        case: String,
        /// The debtor's number.
        #[arg(long)]
        to: String,
        /// The debtor's IANA time zone from the case.
        #[arg(long)]
        debtor_zone: Option<String>,
    },
    /// Shows a call's record.
    Get {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
    },
    /// Lists calls, newest first.
    List {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        collector: Option<String>,
        #[arg(long)]
        case: Option<String>,
        #[arg(long, value_enum)]
        status: Option<CallStatusArg>,
        /// Only completed calls with this result.
        #[arg(long, value_enum)]
        result: Option<CallResultArg>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Follows a call until it is completed, failed or expired, printing each of its events
    /// (WatchCalls), then its record.
    Watch {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
        /// Give up after this many seconds (exit code 4).
        #[arg(long, default_value_t = 300)]
        max_wait: u64,
    },
    /// Prints every call event of a tenant as it happens (Ctrl-C stops); resumable with
    /// --after <last event id printed>.
    Tail {
        #[arg(long)]
        tenant: String,
        /// Only this collector's calls.
        #[arg(long)]
        collector: Option<String>,
        /// Resume after this event id (0: from the next event).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Replay every retained event first.
        #[arg(long)]
        from_start: bool,
    },
    /// Prints a download link for the call's recording.
    Recording {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
    },
}

fn fill(flags: &ConfigFlags, input: &mut gpb::ConfigInput) {
    if let Some(v) = &flags.api_url {
        input.api_url.clone_from(v);
    }
    input.credentials = flags.credentials();
    input.caller_number_pool.clone_from(&flags.caller_numbers);
    input.default_caller_number = flags.default_caller_number.clone().unwrap_or_default();
    input.caller_number_selection = flags.selection.map_or(0, |s| match s {
        Selection::DefaultNumber => gpb::CallerNumberSelection::DefaultNumber as i32,
        Selection::RoundRobin => gpb::CallerNumberSelection::RoundRobin as i32,
        Selection::Random => gpb::CallerNumberSelection::Random as i32,
    });
    input.call_mode = flags.mode.map_or(0, |m| match m {
        Mode::DoubleCall => gpb::CallMode::DoubleCall as i32,
        Mode::MakeCall => gpb::CallMode::MakeCall as i32,
    });
    input.destination_prefix = flags.prefix.clone().unwrap_or_default();
    input.supplier_id = flags.supplier.clone().unwrap_or_default();
    input.max_concurrent_calls = flags.max_concurrent_calls;
    input.call_timeout_seconds = flags.call_timeout;
    input.api_timeout_ms = flags.api_timeout_ms;
    input.allocation_strategy = flags.strategy.map_or(0, |s| strategy(s) as i32);
    input.lease_ttl_seconds = flags.lease_ttl;
    input.cooldown_seconds = flags.cooldown;
    input.callback_secret = flags.callback_secret.clone().unwrap_or_default();
    input.callback_ip_allowlist.clone_from(&flags.allow_ip);
    input.callback_time_zone = flags.time_zone.clone().unwrap_or_default();
    input.phone_region = flags.region.clone().unwrap_or_default();
    input.allowed_number_types = flags
        .allow_number_types
        .iter()
        .copied()
        .map(number_type)
        .collect();
}

fn print_config(out: Out, c: &gpb::TenantConfig) -> anyhow::Result<()> {
    out.one(c)?;
    if !c.new_callback_secret.is_empty() && !out.json {
        line("")?;
        line(&format!(
            "callback secret (shown once, keep it): {}",
            c.new_callback_secret
        ))?;
        line(&format!(
            "Infinity callback URL: http://<gateway>:8080/api/v1/infinity/callback/{}/{}",
            c.tenant_id, c.new_callback_secret
        ))?;
    }
    Ok(())
}

/// `cco config ...`.
pub async fn config(cmd: ConfigCmd, t: &Target, out: Out) -> anyhow::Result<()> {
    let mut c = t.configs()?;
    match cmd {
        ConfigCmd::Create {
            tenant,
            flags,
            inactive,
        } => {
            let mut input = gpb::ConfigInput {
                tenant_id: tenant,
                is_active: inactive.then_some(false),
                ..Default::default()
            };
            fill(&flags, &mut input);
            let cfg = c
                .create_config(gpb::CreateConfigRequest {
                    config: Some(input),
                })
                .await?
                .into_inner();
            print_config(out, &cfg)
        }
        ConfigCmd::Get { tenant, id } => {
            let cfg = match (tenant, id) {
                (_, Some(id)) => {
                    c.get_config_by_id(gpb::GetConfigByIdRequest { config_id: id })
                        .await?
                }
                (Some(t), None) => c.get_config(gpb::GetConfigRequest { tenant_id: t }).await?,
                (None, None) => anyhow::bail!("give --tenant or --id"),
            };
            print_config(out, &cfg.into_inner())
        }
        ConfigCmd::Update {
            tenant,
            version,
            flags,
            regenerate_callback_secret,
        } => {
            let version = match version {
                Some(v) => v,
                None => {
                    c.get_config(gpb::GetConfigRequest {
                        tenant_id: tenant.clone(),
                    })
                    .await?
                    .into_inner()
                    .version
                }
            };
            let credentials = flags.credentials();
            let req = gpb::UpdateConfigRequest {
                tenant_id: tenant,
                version,
                supplier_id: flags.supplier,
                api_url: flags.api_url,
                credentials,
                caller_number_pool: (!flags.caller_numbers.is_empty()).then_some(
                    gpb::CallerNumbers {
                        numbers: flags.caller_numbers,
                    },
                ),
                default_caller_number: flags.default_caller_number,
                caller_number_selection: flags.selection.map(|s| match s {
                    Selection::DefaultNumber => gpb::CallerNumberSelection::DefaultNumber as i32,
                    Selection::RoundRobin => gpb::CallerNumberSelection::RoundRobin as i32,
                    Selection::Random => gpb::CallerNumberSelection::Random as i32,
                }),
                call_mode: flags.mode.map(|m| match m {
                    Mode::DoubleCall => gpb::CallMode::DoubleCall as i32,
                    Mode::MakeCall => gpb::CallMode::MakeCall as i32,
                }),
                destination_prefix: flags.prefix,
                max_concurrent_calls: flags.max_concurrent_calls,
                call_timeout_seconds: flags.call_timeout,
                api_timeout_ms: flags.api_timeout_ms,
                allocation_strategy: flags.strategy.map(|s| strategy(s) as i32),
                lease_ttl_seconds: flags.lease_ttl,
                cooldown_seconds: flags.cooldown,
                callback_secret: flags.callback_secret,
                callback_ip_allowlist: (!flags.allow_ip.is_empty()).then_some(gpb::IpAllowList {
                    cidrs: flags.allow_ip,
                }),
                callback_time_zone: flags.time_zone,
                is_active: None,
                phone_region: flags.region,
                api_encoding: None,
                regenerate_callback_secret,
                allowed_number_types: (!flags.allow_number_types.is_empty()).then(|| {
                    gpb::NumberTypes {
                        types: flags
                            .allow_number_types
                            .into_iter()
                            .map(number_type)
                            .collect(),
                    }
                }),
            };
            print_config(out, &c.update_config(req).await?.into_inner())
        }
        ConfigCmd::Toggle { tenant } => {
            let cfg = c
                .toggle_config(gpb::ToggleConfigRequest {
                    tenant_id: tenant,
                    version: 0,
                })
                .await?
                .into_inner();
            out.note(if cfg.is_active {
                "config is now active"
            } else {
                "config is now inactive"
            })?;
            if out.json {
                out.one(&cfg)?;
            }
            Ok(())
        }
        ConfigCmd::Delete { tenant, force } => {
            let r = c
                .delete_config(gpb::DeleteConfigRequest {
                    tenant_id: tenant,
                    force,
                })
                .await?
                .into_inner();
            out.one(&r)
        }
        ConfigCmd::Test { tenant } => {
            let r = c
                .test_connection(gpb::TestConnectionRequest { tenant_id: tenant })
                .await?
                .into_inner();
            out.one(&r)?;
            if r.ok {
                Ok(())
            } else {
                anyhow::bail!("connection test failed: {} {}", r.code, r.message)
            }
        }
    }
}

/// Lines of a file or stdin; blank lines are kept (the server ignores them) so line numbers match.
fn read_lines(file: Option<&str>) -> anyhow::Result<Vec<String>> {
    let mut text = String::new();
    match file {
        None | Some("-") => {
            std::io::stdin().read_to_string(&mut text)?;
        }
        Some(path) => {
            text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {path}: {e}"))?;
        }
    }
    Ok(text.lines().map(str::to_owned).collect())
}

/// `cco ext ...`.
pub async fn ext(cmd: ExtCmd, t: &Target, out: Out) -> anyhow::Result<()> {
    let mut pool = t.pool()?;
    match cmd {
        ExtCmd::Import {
            tenant,
            config_id,
            file,
        } => {
            let lines = read_lines(file.as_deref())?;
            const CHUNK: usize = 1_000;
            let bar = if out.json || lines.len() <= CHUNK {
                indicatif::ProgressBar::hidden()
            } else {
                indicatif::ProgressBar::new(lines.len() as u64)
            };
            let mut all = apb::BatchImportResponse::default();
            for (i, chunk) in lines.chunks(CHUNK).enumerate() {
                let resp = pool
                    .batch_import(apb::BatchImportRequest {
                        tenant_id: tenant.clone(),
                        config_id: config_id.clone(),
                        numbers: chunk.to_vec(),
                    })
                    .await?
                    .into_inner();
                all.imported += resp.imported;
                all.duplicates += resp.duplicates;
                all.invalid += resp.invalid;
                let offset = u32::try_from(i * CHUNK).unwrap_or(u32::MAX);
                all.results.extend(resp.results.into_iter().map(|mut r| {
                    r.line += offset;
                    r
                }));
                bar.inc(chunk.len() as u64);
            }
            bar.finish_and_clear();
            if out.json {
                return out.one(&all);
            }
            let problems: Vec<&apb::ImportLineResult> = all
                .results
                .iter()
                .filter(|r| r.outcome != apb::ImportOutcome::Imported as i32)
                .collect();
            if !problems.is_empty() {
                out.table(
                    &problems,
                    &[
                        ("line", "line"),
                        ("input", "input"),
                        ("outcome", "outcome"),
                        ("reason", "reason"),
                    ],
                )?;
                line("")?;
            }
            line(&format!(
                "imported {}, duplicates {}, invalid {}",
                all.imported, all.duplicates, all.invalid
            ))
        }
        ExtCmd::List {
            tenant,
            status,
            collector,
            config_id,
        } => {
            let status = status.map_or(0, |s| match s {
                ExtStatusArg::Available => apb::ExtensionStatus::Available as i32,
                ExtStatusArg::InUse => apb::ExtensionStatus::InUse as i32,
                ExtStatusArg::Offline => apb::ExtensionStatus::Offline as i32,
            });
            let mut all = Vec::new();
            let mut token = String::new();
            loop {
                let page = pool
                    .list_extensions(apb::ListExtensionsRequest {
                        tenant_id: tenant.clone(),
                        config_id: config_id.clone().unwrap_or_default(),
                        status,
                        collector_id: collector.clone().unwrap_or_default(),
                        page_size: 1000,
                        page_token: token,
                    })
                    .await?
                    .into_inner();
                all.extend(page.extensions);
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            out.table(
                &all,
                &[
                    ("number", "number"),
                    ("status", "status"),
                    ("collector", "current_collector_id"),
                    ("lease", "current_lease_id"),
                    ("uses", "use_count"),
                    ("last used", "last_used_at"),
                    ("id", "extension_id"),
                ],
            )
        }
        ExtCmd::Stats { tenant, usage } => {
            let s = t
                .leases()?
                .stats(apb::StatsRequest {
                    tenant_id: tenant,
                    include_usage: usage,
                    ..Default::default()
                })
                .await?
                .into_inner();
            if out.json || !usage {
                let mut summary = s.clone();
                if !out.json {
                    summary.usage.clear();
                }
                return out.one(&summary);
            }
            let mut summary = s.clone();
            summary.usage.clear();
            out.one(&summary)?;
            line("")?;
            out.table(
                &s.usage,
                &[
                    ("number", "extension_number"),
                    ("leases", "lease_count"),
                    ("busy seconds", "busy_seconds"),
                ],
            )
        }
        ExtCmd::Release { tenant, id } => {
            let r = pool
                .release_extension(apb::ReleaseExtensionRequest {
                    tenant_id: tenant,
                    extension_id: id,
                })
                .await?
                .into_inner();
            out.one(&r)
        }
        ExtCmd::Delete { tenant, ids, force } => {
            let r = pool
                .batch_delete_extensions(apb::BatchDeleteExtensionsRequest {
                    tenant_id: tenant,
                    extension_ids: ids,
                    force,
                })
                .await?
                .into_inner();
            if out.json {
                return out.one(&r);
            }
            out.table(
                &r.results,
                &[
                    ("id", "extension_id"),
                    ("deleted", "deleted"),
                    ("reason", "reason"),
                ],
            )?;
            if r.deleted as usize == r.results.len() {
                Ok(())
            } else {
                anyhow::bail!("{} of {} extensions deleted", r.deleted, r.results.len())
            }
        }
        ExtCmd::ForceReleaseCollector { tenant, collector } => {
            let r = pool
                .force_release_collector(apb::ForceReleaseCollectorRequest {
                    tenant_id: tenant,
                    collector_id: collector,
                })
                .await?
                .into_inner();
            out.one(&r)
        }
    }
}

/// `cco collector ...`.
pub async fn collector(cmd: CollectorCmd, t: &Target, out: Out) -> anyhow::Result<()> {
    let mut c = t.collectors()?;
    match cmd {
        CollectorCmd::Set {
            tenant,
            id,
            callback_number,
            name,
            inactive,
        } => {
            let r = c
                .upsert_collector(gpb::UpsertCollectorRequest {
                    tenant_id: tenant,
                    collector_id: id,
                    callback_number,
                    display_name: name,
                    active: Some(!inactive),
                })
                .await?
                .into_inner();
            out.one(&r)
        }
        CollectorCmd::Get { tenant, id } => out.one(
            &c.get_collector(gpb::GetCollectorRequest {
                tenant_id: tenant,
                collector_id: id,
            })
            .await?
            .into_inner(),
        ),
        CollectorCmd::List { tenant } => {
            let mut all = Vec::new();
            let mut token = String::new();
            loop {
                let page = c
                    .list_collectors(gpb::ListCollectorsRequest {
                        tenant_id: tenant.clone(),
                        page_size: 1000,
                        page_token: token,
                        active: None,
                    })
                    .await?
                    .into_inner();
                all.extend(page.collectors);
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            out.table(
                &all,
                &[
                    ("collector", "collector_id"),
                    ("name", "display_name"),
                    ("callback number", "callback_number"),
                    ("active", "active"),
                    ("last extension", "last_extension_number"),
                ],
            )
        }
    }
}

const TERMINAL: [i32; 3] = [
    gpb::CallStatus::Completed as i32,
    gpb::CallStatus::Failed as i32,
    gpb::CallStatus::Expired as i32,
];

/// One event per line: id, time, call, type, status, and what is worth knowing.
fn print_event(e: &gpb::CallEvent, out: Out) -> anyhow::Result<()> {
    if out.json {
        return line(&serde_json::to_string(e)?);
    }
    let at = e
        .occurred_at
        .as_ref()
        .and_then(cco_contracts::time::from_timestamp)
        .map(|t| t.format("%H:%M:%S%.3f").to_string())
        .unwrap_or_default();
    let kind = gpb::CallEventType::try_from(e.r#type).map_or("?", |t| t.as_str_name());
    let mut detail = String::new();
    if let Ok(r) = gpb::CallResult::try_from(e.result)
        && r != gpb::CallResult::Unspecified
    {
        detail = format!(
            "  {} talk {} s",
            r.as_str_name().trim_start_matches("CALL_RESULT_"),
            e.talk_seconds
        );
    }
    if !e.error_code.is_empty() {
        detail.push_str(&format!("  {}: {}", e.error_code, e.error_message));
    }
    line(&format!(
        "#{:<6} {at}  {}  {}  {}  collector {}{}",
        e.event_id,
        e.call_id,
        kind.trim_start_matches("CALL_EVENT_TYPE_"),
        status_name(e.status).trim_start_matches("CALL_STATUS_"),
        e.collector_id,
        detail
    ))
}

fn status_name(v: i32) -> &'static str {
    gpb::CallStatus::try_from(v).map_or("?", |s| s.as_str_name())
}

/// `cco call ...`.
pub async fn call(cmd: CallCmd, t: &Target, out: Out) -> anyhow::Result<()> {
    let mut c = t.calls()?;
    match cmd {
        CallCmd::Make {
            tenant,
            collector,
            case,
            to,
            caller_number,
            key,
            params,
            strategy: s,
            debtor_zone,
            override_id,
        } => {
            let mut custom = HashMap::new();
            for p in params {
                let (k, v) = p
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--param {p:?}: write key=value"))?;
                custom.insert(k.to_owned(), v.to_owned());
            }
            let r = c
                .make_call(gpb::MakeCallRequest {
                    tenant_id: tenant,
                    collector_id: collector,
                    case_id: case,
                    destination_number: to,
                    caller_number: caller_number.unwrap_or_default(),
                    idempotency_key: key.unwrap_or_default(),
                    custom_params: custom,
                    strategy: s.map_or(0, |s| strategy(s) as i32),
                    debtor_time_zone: debtor_zone.unwrap_or_default(),
                    compliance_override_id: override_id.unwrap_or_default(),
                })
                .await?
                .into_inner();
            out.one(&r)?;
            if r.status == gpb::CallStatus::Failed as i32 {
                anyhow::bail!(
                    "Infinity refused the call: {} {}",
                    r.infinity_code,
                    r.infinity_message
                );
            }
            Ok(())
        }
        CallCmd::Check {
            tenant,
            collector,
            case,
            to,
            debtor_zone,
        } => {
            let r = c
                .check_call(gpb::CheckCallRequest {
                    tenant_id: tenant,
                    collector_id: collector,
                    case_id: case,
                    destination_number: to,
                    debtor_time_zone: debtor_zone.unwrap_or_default(),
                })
                .await?
                .into_inner();
            out.one(&r)?;
            if !r.allowed {
                let mut why = format!(
                    "refused: {}: {}",
                    crate::output::reason_words(&r.reason),
                    r.message
                );
                if let Some(t) = r
                    .next_allowed_at
                    .as_ref()
                    .and_then(cco_contracts::time::from_timestamp)
                {
                    why.push_str(&format!(
                        "; calling becomes possible at {}",
                        t.format("%Y-%m-%d %H:%M:%S UTC")
                    ));
                }
                anyhow::bail!(why);
            }
            Ok(())
        }
        CallCmd::Get { tenant, id } => out.one(
            &c.get_call(gpb::GetCallRequest {
                tenant_id: tenant,
                call_id: id,
            })
            .await?
            .into_inner(),
        ),
        CallCmd::List {
            tenant,
            collector,
            case,
            status,
            result,
            limit,
        } => {
            let result = result.map_or(0, |r| {
                (match r {
                    CallResultArg::Connected => gpb::CallResult::Connected,
                    CallResultArg::NoAnswer => gpb::CallResult::NoAnswer,
                    CallResultArg::Busy => gpb::CallResult::Busy,
                    CallResultArg::Rejected => gpb::CallResult::Rejected,
                    CallResultArg::Cancelled => gpb::CallResult::Cancelled,
                    CallResultArg::Failed => gpb::CallResult::Failed,
                    CallResultArg::NotConnected => gpb::CallResult::NotConnected,
                }) as i32
            });
            let status = status.map_or(0, |s| match s {
                CallStatusArg::Dialing => gpb::CallStatus::Dialing as i32,
                CallStatusArg::Ringing => gpb::CallStatus::Ringing as i32,
                CallStatusArg::Unknown => gpb::CallStatus::Unknown as i32,
                CallStatusArg::Completed => gpb::CallStatus::Completed as i32,
                CallStatusArg::Failed => gpb::CallStatus::Failed as i32,
                CallStatusArg::Expired => gpb::CallStatus::Expired as i32,
            });
            let page = c
                .list_calls(gpb::ListCallsRequest {
                    tenant_id: tenant,
                    collector_id: collector.unwrap_or_default(),
                    case_id: case.unwrap_or_default(),
                    status,
                    result,
                    page_size: limit.clamp(1, 500),
                    ..Default::default()
                })
                .await?
                .into_inner();
            out.table(
                &page.calls,
                &[
                    ("call", "call_id"),
                    ("created", "created_at"),
                    ("collector", "collector_id"),
                    ("case", "case_id"),
                    ("extension", "extension_number"),
                    ("status", "status"),
                    ("result", "result"),
                    ("talk s", "talk_seconds"),
                ],
            )
        }
        CallCmd::Watch {
            tenant,
            id,
            max_wait,
        } => {
            let watch = async {
                let mut events = c
                    .watch_calls(gpb::WatchCallsRequest {
                        tenant_id: tenant.clone(),
                        call_id: id.clone(),
                        from_start: true,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                while let Some(e) = events.message().await? {
                    print_event(&e, out)?;
                    if TERMINAL.contains(&e.status) {
                        return Ok(true);
                    }
                }
                Ok::<_, anyhow::Error>(false)
            };
            let ended = tokio::time::timeout(Duration::from_secs(max_wait), watch)
                .await
                .map_err(|_| {
                    tonic::Status::deadline_exceeded(format!(
                        "call {id} has not ended after {max_wait} s"
                    ))
                })??;
            if !ended {
                anyhow::bail!("the server ended the watch before call {id} ended; run watch again");
            }
            if !out.json {
                let r = c
                    .get_call(gpb::GetCallRequest {
                        tenant_id: tenant,
                        call_id: id,
                    })
                    .await?
                    .into_inner();
                line("")?;
                out.one(&r)?;
            }
            Ok(())
        }
        CallCmd::Tail {
            tenant,
            collector,
            after,
            from_start,
        } => {
            let mut events = c
                .watch_calls(gpb::WatchCallsRequest {
                    tenant_id: tenant,
                    collector_id: collector.unwrap_or_default(),
                    after_event_id: after,
                    from_start,
                    ..Default::default()
                })
                .await?
                .into_inner();
            while let Some(e) = events.message().await? {
                print_event(&e, out)?;
            }
            Ok(())
        }
        CallCmd::Recording { tenant, id } => out.one(
            &c.get_recording(gpb::GetRecordingRequest {
                tenant_id: tenant,
                call_id: id,
            })
            .await?
            .into_inner(),
        ),
    }
}

/// `cco health`: one grpc.health.v1 check of the whole server.
pub async fn health(endpoint: &str, timeout: Duration) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {endpoint}: {e}"))?;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = client
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner()
        .status;
    if status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
        line("SERVING")
    } else {
        anyhow::bail!("{endpoint} is not serving (status {status})")
    }
}
