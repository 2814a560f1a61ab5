//! Every text of the console in English and Simplified Chinese. The language comes from the
//! `cco_lang` cookie (the switch in the header), else from the browser's `Accept-Language`.

use axum::extract::FromRequestParts;
use http::request::Parts;

/// A language of the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// English.
    En,
    /// Simplified Chinese (zh-CN).
    Zh,
}

/// The cookie holding an explicit choice.
pub const LANG_COOKIE: &str = "cco_lang";

impl Lang {
    /// The `lang` attribute / cookie value.
    pub fn tag(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh-CN",
        }
    }

    /// Parses a cookie value.
    pub fn from_tag(tag: &str) -> Option<Self> {
        match tag {
            "en" => Some(Lang::En),
            "zh-CN" => Some(Lang::Zh),
            _ => None,
        }
    }

    /// The first of English or Chinese in an `Accept-Language` header (quality ignored: browsers
    /// list languages in order of preference); English when neither is named.
    pub fn from_accept_language(header: &str) -> Self {
        for part in header.split(',') {
            let tag = part
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if tag.starts_with("zh") {
                return Lang::Zh;
            }
            if tag.starts_with("en") {
                return Lang::En;
            }
        }
        Lang::En
    }

    /// The other language (the switch's target).
    pub fn other(self) -> Self {
        match self {
            Lang::En => Lang::Zh,
            Lang::Zh => Lang::En,
        }
    }

    /// A text.
    pub fn t(self, text: T) -> &'static str {
        text.get(self)
    }

    /// A text with `{0}`, `{1}`... filled in.
    pub fn f(self, text: T, args: &[&str]) -> String {
        let mut s = text.get(self).to_owned();
        for (i, a) in args.iter().enumerate() {
            s = s.replace(&format!("{{{i}}}"), a);
        }
        s
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Lang {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if let Some(l) = crate::web::cookie(&parts.headers, LANG_COOKIE).and_then(Lang::from_tag) {
            return Ok(l);
        }
        let accept = parts
            .headers
            .get(http::header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        Ok(Lang::from_accept_language(accept))
    }
}

macro_rules! texts {
    ($($key:ident => $en:literal, $zh:literal;)*) => {
        /// A text of the console.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum T { $(#[allow(missing_docs)] $key,)* }

        impl T {
            /// Every text (for the completeness test).
            pub const ALL: &'static [T] = &[$(T::$key,)*];

            /// The text in `lang`.
            pub fn get(self, lang: Lang) -> &'static str {
                match (self, lang) {
                    $((T::$key, Lang::En) => $en, (T::$key, Lang::Zh) => $zh,)*
                }
            }
        }
    };
}

texts! {
    AppName => "CCO call console", "CCO 外呼控制台";
    SwitchLanguage => "中文", "English";
    SwitchLanguageLabel => "切换到中文", "Switch to English";
    SkipToContent => "Skip to content", "跳到正文";
    SignIn => "Sign in", "登录";
    SignOut => "Sign out", "退出登录";
    SignedInAs => "Signed in as {0} ({1})", "已登录：{0}（{1}）";
    SignInIntro => "Sign in with the token the CCO platform gave you, or with an administrator's API key.", "请使用 CCO 平台签发的令牌登录，或使用管理员 API 密钥登录。";
    SignInWithToken => "Sign in with a CCO token", "使用 CCO 令牌登录";
    Token => "Token (JWT)", "令牌（JWT）";
    TokenHelp => "Paste the whole token. It is kept only in your session cookie.", "粘贴完整令牌。它只保存在您的会话 Cookie 中。";
    SignInWithKey => "Sign in with an API key", "使用 API 密钥登录";
    ApiKey => "API key", "API 密钥";
    Tenant => "Tenant", "租户";
    TenantHelp => "The tenant this key manages.", "此密钥管理的租户。";
    DevSignIn => "Development sign-in (cco stack only)", "开发环境登录（仅 cco stack）";
    DevSignInHelp => "Demo people of this local stack; never offered in production.", "本地演示环境中的演示人员；生产环境不会提供。";
    SignInAsPerson => "Sign in as {0}", "以 {0} 身份登录";
    HandoffWorking => "The CCO platform is signing you in to the call console.", "CCO 平台正在为您登录外呼控制台。";
    HandoffNoToken => "No token was passed to this page. Sign in below.", "此页面未收到令牌。请在下方登录。";
    TokenRequired => "Paste your token.", "请粘贴令牌。";
    TokenMalformed => "This is not a CCO token (a JWT has three parts separated by dots).", "这不是 CCO 令牌（JWT 由三段以点分隔的内容组成）。";
    TokenExpired => "This token has expired. Ask the CCO platform for a new one.", "此令牌已过期。请向 CCO 平台获取新令牌。";
    TokenNoTenant => "This token names no tenant.", "此令牌没有指定租户。";
    TokenRoleUnknown => "This token's role is not one the console knows (admin, supervisor, collector).", "此令牌的角色无法识别（应为 admin、supervisor 或 collector）。";
    CredentialRefused => "The services did not accept this sign-in: {0}", "服务未接受此登录：{0}";
    KeyRequired => "Enter the API key.", "请输入 API 密钥。";
    KeyNotAdmin => "This key may not manage tenant {0}. The console needs an administrator's key for that tenant.", "此密钥无权管理租户 {0}。控制台需要该租户的管理员密钥。";
    TenantRequired => "Enter the tenant.", "请输入租户。";
    SessionEnded => "Your session has ended. Sign in again.", "会话已结束，请重新登录。";
    FormExpired => "This form has expired or did not come from this console. Reload the page and try again.", "此表单已过期或并非来自本控制台。请刷新页面后重试。";
    NotAllowedPage => "This page is not available to your role.", "您的角色无法访问此页面。";
    RoleAdmin => "administrator", "管理员";
    RoleSupervisor => "supervisor", "主管";
    RoleCollector => "collector", "催员";
    SwitchTenant => "Switch tenant", "切换租户";
    Go => "Go", "切换";
    NavOverview => "Overview", "概览";
    NavConfig => "Infinity settings", "Infinity 配置";
    NavPool => "Extension pool", "分机池";
    NavCollectors => "Collectors", "催员";
    NavWorkbench => "Workbench", "工作台";
    NavCalls => "Calls", "通话记录";
    Save => "Save", "保存";
    Cancel => "Cancel", "取消";
    Delete => "Delete", "删除";
    Edit => "Edit", "编辑";
    Filter => "Filter", "筛选";
    Clear => "Clear", "清除";
    Next => "Next page", "下一页";
    Pages => "Pages", "分页";
    HandoffContinue => "Continue as {0}", "以 {0} 身份继续";
    ActionOn => "{0}: {1}", "{0}：{1}";
    DurationHms => "{0}h {1}m {2}s", "{0}小时{1}分{2}秒";
    DurationMs => "{0}m {1}s", "{0}分{1}秒";
    DurationS => "{0}s", "{0}秒";
    First => "First page", "第一页";
    Any => "Any", "全部";
    Yes => "Yes", "是";
    No => "No", "否";
    Done => "Done.", "已完成。";
    Live => "Updates live", "实时更新";
    LiveLost => "Live updates paused; reconnecting…", "实时更新已暂停，正在重连…";
    Copy => "Copy", "复制";
    Copied => "Copied", "已复制";
    None_ => "None", "无";
    NotSet => "Not set", "未设置";
    MustBeNumber => "Enter a whole number.", "请输入整数。";
    AccessKeyNeeded => "Enter the access key again to change the app id.", "修改应用 ID 时请重新输入访问密钥。";
    GiveCredential => "Enter the credential for the chosen mode.", "请输入所选方式的凭证。";
    // Errors from the services, in words.
    ErrUnauthenticated => "Your sign-in is no longer accepted. Sign in again.", "您的登录已失效，请重新登录。";
    ErrPermission => "You are not allowed to do this.", "您无权执行此操作。";
    ErrNotFound => "It was not found. It may have been deleted.", "未找到，可能已被删除。";
    ErrInvalid => "Some of what you entered is not valid.", "部分输入无效。";
    ErrConflict => "Someone else changed this meanwhile. Reload and try again.", "其他人已修改了此内容。请刷新后重试。";
    ErrExists => "It exists already.", "已经存在。";
    ErrPrecondition => "This cannot be done right now.", "当前无法执行此操作。";
    ErrBusy => "The limit is reached right now. Try again in a moment.", "当前已达到上限，请稍后重试。";
    ErrUnavailable => "The call service cannot be reached right now. Try again in a moment.", "暂时无法连接呼叫服务，请稍后重试。";
    ErrUnsupported => "The tenant's Infinity does not support this.", "该租户的 Infinity 不支持此操作。";
    ErrInternal => "Something went wrong on our side. Try again; if it keeps happening, tell your administrator.", "系统出现问题。请重试；如果持续出现，请联系管理员。";
    ErrDetail => "Details: {0}", "详情：{0}";
    // Refusals a collector sees.
    RefuseNoCallback => "You have no callback number, so Infinity cannot ring your phone. Ask your administrator to set one.", "您没有设置回拨号码，Infinity 无法呼叫您的电话。请联系管理员设置。";
    RefuseNoExtension => "No free line right now: every extension is busy or offline. Try again in a moment.", "当前没有空闲线路：所有分机都在使用或离线。请稍后重试。";
    RefuseConcurrency => "Your team has reached its limit of calls at the same time. Try again when a call ends.", "团队已达到同时通话数上限。请在有通话结束后重试。";
    RefuseTenantDisabled => "Calling is switched off for your team right now.", "您团队的外呼功能目前已关闭。";
    RefuseNumberInvalid => "This number is not valid: {0}", "此号码无效：{0}";
    RefuseCollectorInactive => "Your collector account is not active. Ask your administrator.", "您的催员账号未启用，请联系管理员。";
    RefuseCollectorUnknown => "You are not set up as a collector of this tenant yet. Ask your administrator.", "您尚未被设置为该租户的催员，请联系管理员。";
    RefuseNoConfig => "This tenant has no Infinity settings yet. Ask your administrator.", "该租户尚未配置 Infinity，请联系管理员。";
    RefuseHours => "Outside the calling hours in the debtor's time zone ({0}).", "当前不在债务人所在时区（{0}）的允许呼叫时段内。";
    RefuseHoliday => "Today is a holiday in the debtor's time zone: no calls.", "债务人所在时区今天是节假日，不允许呼叫。";
    RefuseFrequencyCap => "This debtor has been called as often as the rules allow for now.", "该债务人的呼叫次数已达到规则允许的上限。";
    RefuseCooldown => "There was a conversation about this case recently: no calls during the cool-down.", "该案件近期已有通话，冷却期内不允许呼叫。";
    RefuseDoNotCall => "This number is on a do-not-call list. Do not call it.", "此号码在禁止呼叫名单中，请勿呼叫。";
    RefuseNumberType => "This kind of number is not dialled (emergency, premium-rate or satellite).", "此类号码不允许拨打（紧急、付费或卫星号码）。";
    RefuseRetryIn => "Calling becomes possible in {0}.", "{0}后可以呼叫。";
    RefuseKeyReused => "This call form was already used for another call. Reload the page.", "此呼叫表单已用于其他呼叫，请刷新页面。";
    // Config page.
    ConfigTitle => "Infinity settings", "Infinity 配置";
    ConfigNone => "This tenant has no Infinity settings yet. Fill in the form to create them.", "该租户尚未配置 Infinity。请填写表单创建配置。";
    ConfigCreate => "Create settings", "创建配置";
    ConfigCreated => "Settings created.", "配置已创建。";
    ConfigUpdated => "Settings saved.", "配置已保存。";
    ConfigEnabled => "Calling enabled", "外呼已启用";
    ConfigDisabled => "Calling disabled", "外呼已停用";
    ConfigEnable => "Enable calling", "启用外呼";
    ConfigDisable => "Disable calling", "停用外呼";
    ConfigVersion => "Version {0}", "版本 {0}";
    FieldSupplier => "Supplier id", "供应商 ID";
    FieldApiUrl => "Infinity API URL", "Infinity API 地址";
    FieldApiUrlHelp => "The whole URL, e.g. https://infinity.example.com/api", "完整地址，例如 https://infinity.example.com/api";
    FieldCredMode => "Credentials", "凭证类型";
    CredApp => "App id and access key (login)", "应用 ID 与访问密钥（登录）";
    CredToken => "Static access token", "静态访问令牌";
    FieldAppId => "App id", "应用 ID";
    FieldAccessKey => "Access key", "访问密钥";
    FieldAccessToken => "Access token", "访问令牌";
    SecretKeep => "Stored ({0}). Leave empty to keep it.", "已保存（{0}）。留空则保持不变。";
    SecretNone => "Not stored.", "未保存。";
    FieldCallerPool => "Caller numbers", "主叫号码池";
    FieldCallerPoolHelp => "One per line.", "每行一个。";
    FieldDefaultCaller => "Default caller number", "默认主叫号码";
    FieldSelection => "Caller number choice", "主叫号码选择方式";
    SelDefault => "Always the default number", "始终使用默认号码";
    SelRoundRobin => "In turn", "轮流使用";
    SelRandom => "At random", "随机";
    FieldCallMode => "Call mode", "呼叫模式";
    ModeDouble => "Double call: ring the collector's phone, then the debtor", "双向呼叫：先呼催员电话，再呼债务人";
    ModeMake => "Make call: ring the SIP extension, then the debtor", "分机外呼：先呼 SIP 分机，再呼债务人";
    FieldPrefix => "Destination prefix", "被叫号码前缀";
    FieldMaxCalls => "Most calls at once", "最大同时通话数";
    FieldCallTimeout => "Ring timeout (seconds)", "振铃超时（秒）";
    FieldApiTimeout => "Infinity request timeout (ms)", "Infinity 请求超时（毫秒）";
    FieldStrategy => "Extension choice", "分机分配策略";
    StratLru => "Least recently used", "最久未使用";
    StratRoundRobin => "Round robin", "轮询";
    StratAffinity => "Collector's last extension", "优先催员上次使用的分机";
    FieldLeaseTtl => "Lease time (seconds)", "分机租期（秒）";
    FieldCooldown => "Rest after a call (seconds)", "通话后冷却（秒）";
    FieldCallbackSecret => "Callback secret", "回调密钥";
    FieldCallbackSecretHelp => "16-128 characters; leave empty to keep (or, when creating, to generate one).", "16-128 个字符；留空则保持不变（创建时留空则自动生成）。";
    FieldRegenerate => "Generate a new callback secret", "生成新的回调密钥";
    FieldAllowlist => "Callback source networks", "回调来源网段";
    FieldAllowlistHelp => "CIDRs, one per line; empty allows any address.", "CIDR，每行一个；留空表示允许任何地址。";
    FieldTimeZone => "Infinity time zone", "Infinity 时区";
    FieldRegion => "Phone region", "号码地区";
    FieldRegionHelp => "ISO country code for numbers written without a country code, e.g. CN, MX.", "未带国家码号码所属地区的 ISO 代码，例如 CN、MX。";
    FieldEncoding => "Request encoding", "请求编码";
    EncForm => "Form (urlencoded)", "表单（urlencoded）";
    EncMultipart => "Multipart", "Multipart";
    FieldNumberTypes => "Costly numbers allowed", "允许拨打的高费用号码";
    NtPremium => "Premium rate", "付费号码";
    NtSatellite => "Satellite", "卫星电话";
    NtIntl => "International networks", "国际网络号码";
    NtPersonal => "Personal numbers", "个人号码";
    FieldActive => "Calling enabled", "启用外呼";
    CallbackUrlTitle => "Callback URL for Infinity", "提供给 Infinity 的回调地址";
    CallbackUrlHelp => "Give this URL to Infinity as the call-record callback. {secret} stands for the callback secret.", "请将此地址作为通话记录回调地址提供给 Infinity。{secret} 代表回调密钥。";
    CallbackUrlNew => "A new callback secret was generated. This is the only time it is shown: give this URL to Infinity now.", "已生成新的回调密钥。它只显示这一次：请立即将此地址提供给 Infinity。";
    CallbackUrlUnknown => "The gateway's public address is not configured (CONSOLE__CALLBACK_BASE_URL); the path is:", "未配置网关的公网地址（CONSOLE__CALLBACK_BASE_URL）；路径为：";
    TestConnection => "Test connection", "测试连接";
    TestOk => "Infinity answered.", "Infinity 已响应。";
    TestFailed => "The test failed.", "测试失败。";
    TestMethod => "Method", "方式";
    TestLatency => "Latency", "延迟";
    TestCompany => "Company", "公司";
    TestExtensions => "Extensions Infinity knows", "Infinity 已知分机";
    TestRegistered => "Registered", "已注册";
    TestUnknown => "Pool extensions Infinity does not know", "Infinity 未知的池内分机";
    TestUnregistered => "Pool extensions not registered", "未注册的池内分机";
    TestPoolNotChecked => "The pool was not compared: {0}", "未比较分机池：{0}";
    // Pool.
    PoolTitle => "Extension pool", "分机池";
    StatTotal => "Total", "总数";
    StatFree => "Free", "空闲";
    StatInUse => "In use", "使用中";
    StatOffline => "Offline", "离线";
    StatCooling => "Cooling down", "冷却中";
    StatUtilisation => "Utilisation", "使用率";
    ImportTitle => "Import extensions", "批量导入分机";
    ImportLines => "Extension numbers, one per line", "分机号码，每行一个";
    ImportButton => "Import", "导入";
    ImportSummary => "{0} imported, {1} already there, {2} not valid.", "导入 {0} 个，已存在 {1} 个，无效 {2} 个。";
    ImportLine => "Line", "行";
    ImportInput => "Input", "输入";
    ImportOutcome => "Outcome", "结果";
    OutImported => "imported", "已导入";
    OutDuplicate => "already in the pool", "已在池中";
    OutInvalid => "not valid", "无效";
    Extension => "Extension", "分机";
    Status => "Status", "状态";
    Collector => "Collector", "催员";
    LastUsed => "Last used", "上次使用";
    Uses => "Uses", "使用次数";
    Actions => "Actions", "操作";
    ExtAvailable => "free", "空闲";
    ExtInUse => "in use", "使用中";
    ExtOffline => "offline", "离线";
    Release => "Release", "释放";
    TakeOffline => "Take offline", "下线";
    BringOnline => "Bring online", "上线";
    Select => "Select", "选择";
    SelectExtension => "Select extension {0}", "选择分机 {0}";
    DeleteSelected => "Delete selected", "删除所选";
    ConfirmDeleteTitle => "Delete these extensions?", "确定删除这些分机？";
    ConfirmDeleteText => "{0} extensions will be removed from the pool. Extensions in a call are skipped unless you also end their calls.", "将从池中删除 {0} 个分机。正在通话的分机会被跳过，除非同时结束其通话。";
    ConfirmDeleteForce => "Also delete extensions in a call (their leases end)", "同时删除正在通话的分机（其租约将结束）";
    ConfirmDelete => "Yes, delete", "确认删除";
    DeleteReport => "{0} deleted.", "已删除 {0} 个。";
    NothingSelected => "Select at least one extension.", "请至少选择一个分机。";
    ForceReleaseTitle => "Free a collector's extensions", "强制释放催员的分机";
    ForceRelease => "Force release", "强制释放";
    ForceReleased => "{0} extensions freed.", "已释放 {0} 个分机。";
    Released => "Extension released.", "分机已释放。";
    NotReleased => "Nothing to release: {0}", "无需释放：{0}";
    UsageTitle => "Usage per extension", "分机使用情况";
    UsageWindow => "Window", "时间范围";
    UsageLeases => "Leases", "租用次数";
    UsageBusy => "Busy time", "占用时长";
    Window1h => "Last hour", "最近 1 小时";
    Window24h => "Last 24 hours", "最近 24 小时";
    Window7d => "Last 7 days", "最近 7 天";
    Show => "Show", "显示";
    NoUsage => "No leases in this window.", "此时间范围内没有租用记录。";
    NoExtensions => "No extensions.", "没有分机。";
    // Collectors.
    CollectorsTitle => "Collectors", "催员";
    CollectorId => "Collector id", "催员 ID";
    DisplayName => "Display name", "显示名称";
    CallbackNumber => "Callback number", "回拨号码";
    CallbackNumberHelp => "The collector's own phone, rung first. With or without the country code.", "催员自己的电话，会先被呼叫。可带或不带国家码。";
    Active => "Active", "启用";
    AddCollector => "Add collector", "添加催员";
    EditCollector => "Edit collector {0}", "编辑催员 {0}";
    CollectorSaved => "Collector {0} saved.", "催员 {0} 已保存。";
    CollectorDeleted => "Collector {0} deleted.", "催员 {0} 已删除。";
    ConfirmDeleteCollector => "Delete collector {0}?", "确定删除催员 {0}？";
    NoCollectors => "No collectors yet.", "还没有催员。";
    // Workbench.
    WorkbenchTitle => "Workbench", "工作台";
    CaseId => "Case id", "案件 ID";
    DebtorNumber => "Debtor's number", "债务人号码";
    OtherNumbers => "The case's other numbers", "案件的其他号码";
    OtherNumbersHelp => "One per line; each gets its own call button.", "每行一个；每个号码都有自己的呼叫按钮。";
    CallAs => "Call as collector", "以此催员身份呼叫";
    CallButton => "Call", "呼叫";
    ShowNumbers => "A button per number", "每个号码一个按钮";
    CallNumber => "Call {0}", "呼叫 {0}";
    SupervisorNoCalls => "Supervisors watch calls here; placing calls is for collectors and administrators.", "主管可在此查看通话；只有催员和管理员可以发起呼叫。";
    CurrentCall => "Current call", "当前通话";
    StateDialing => "Dialing…", "正在拨号…";
    StateRinging => "Ringing on your phone — answer it to be connected", "您的电话正在响铃 — 接听后即可接通";
    StateUnknown => "Waiting for Infinity to confirm…", "等待 Infinity 确认…";
    StateEnded => "Ended", "已结束";
    StateFailed => "Not placed", "未能发起";
    StateExpired => "Ended (no report from Infinity)", "已结束（Infinity 未回报）";
    Result => "Result", "结果";
    TalkTime => "Talk time", "通话时长";
    Recording => "Recording", "录音";
    RecordingPlayer => "Recording of call {0}", "通话 {0} 的录音";
    RecordingDownload => "Download the recording", "下载录音";
    NoRecording => "No recording.", "没有录音。";
    RecentCalls => "Your recent calls", "最近通话";
    RecentCallsOf => "Recent calls of {0}", "{0} 的最近通话";
    NoCalls => "No calls.", "没有通话。";
    HangUp => "Hang up", "挂断";
    HungUp => "Hang-up requested; the call ends when Infinity reports it.", "已请求挂断；Infinity 回报后通话结束。";
    // Calls.
    CallsTitle => "Calls", "通话记录";
    CallId => "Call id", "通话 ID";
    Created => "Created", "创建时间";
    Since => "From", "开始时间";
    Until => "To", "结束时间";
    Number => "Number", "号码";
    Case => "Case", "案件";
    CallDetail => "Call {0}", "通话 {0}";
    Timeline => "Timeline", "时间线";
    NoEvents => "No events retained.", "没有保留的事件。";
    BackToCalls => "Back to calls", "返回通话记录";
    NewRowsLive => "New calls appear here as they are placed.", "新通话发起后会出现在这里。";
    // Call record fields.
    FSupplier => "Supplier", "供应商";
    FDestination => "Debtor's number", "债务人号码";
    FDialled => "Dialled digits", "实际拨打号码";
    FCaller => "Caller number", "主叫号码";
    FExtension => "Extension", "分机";
    FLease => "Lease", "租约";
    FFencing => "Fencing token", "防护令牌";
    FMode => "Call mode", "呼叫模式";
    FStart => "Started", "开始";
    FAnswer => "Answered", "接听";
    FEnd => "Ended", "结束";
    FTotal => "Total time", "总时长";
    FHangupCause => "Hang-up cause", "挂断原因码";
    FHangupSide => "Hung up by", "挂断方";
    FRecordFile => "Recording file", "录音文件";
    FInfinityUuid => "Infinity uuid", "Infinity UUID";
    FCdrId => "Infinity CDR id", "Infinity 话单 ID";
    FErrorCode => "Error code", "错误码";
    FErrorMessage => "Error", "错误信息";
    FIdempotency => "Idempotency key", "幂等键";
    FAttempts => "Dial attempts", "拨号次数";
    FUpdated => "Updated", "更新时间";
    FLeaseReleased => "Extension freed", "分机已释放";
    FCustom => "Custom parameters", "自定义参数";
    FRawCallback => "Infinity's callback", "Infinity 回调原文";
    // Statuses, results, events.
    StDialing => "dialing", "拨号中";
    StRinging => "ringing", "振铃中";
    StUnknown => "unconfirmed", "待确认";
    StCompleted => "completed", "已完成";
    StFailed => "failed", "失败";
    StExpired => "expired", "已过期";
    ReConnected => "connected", "已接通";
    ReNoAnswer => "no answer", "无人接听";
    ReBusy => "busy", "忙线";
    ReRejected => "rejected", "被拒接";
    ReCancelled => "cancelled", "已取消";
    ReFailed => "line failure", "线路故障";
    ReNotConnected => "not connected", "未接通";
    EvCreated => "Call recorded, dialing", "通话已记录，正在拨号";
    EvDialing => "Dialing again on another extension", "换用其他分机重新拨号";
    EvRinging => "Infinity accepted; ringing", "Infinity 已受理，正在振铃";
    EvUnknown => "Outcome unknown; waiting for Infinity", "结果未知，等待 Infinity";
    EvCompleted => "Call ended", "通话结束";
    EvFailed => "Not placed", "未能发起";
    EvExpired => "Expired without a report", "超时未收到回报";
    // Overview.
    OverviewTitle => "Overview", "概览";
    LiveNow => "Live calls now", "当前通话数";
    CallsToday => "Calls today", "今日通话";
    ConnectedRate => "Connected rate today", "今日接通率";
    ByResult => "Today's calls by result", "今日通话结果分布";
    ByCause => "Today's ended calls by hang-up cause", "今日挂断原因分布";
    PoolToday => "Pool utilisation today, by hour", "今日分机池每小时使用率";
    TodayIn => "Today is counted in {0}.", "“今日”按 {0} 时区计算。";
    DataTable => "The numbers", "数据";
    RecordTitle => "Communication record", "通信记录";
    Milliseconds => "{0} ms", "{0} 毫秒";
    ChartOf => "Chart: {0}", "图表：{0}";
    NoData => "No data yet.", "暂无数据。";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_text_exists_in_both_languages() {
        for t in T::ALL {
            let (en, zh) = (t.get(Lang::En), t.get(Lang::Zh));
            assert!(!en.trim().is_empty() && !zh.trim().is_empty(), "{t:?}");
            // Placeholders match, so a filled text never loses an argument.
            for i in 0..4 {
                let p = format!("{{{i}}}");
                assert_eq!(en.contains(&p), zh.contains(&p), "{t:?} placeholder {p}");
            }
        }
        // The Chinese texts are Chinese (a few names and codes are the same in both).
        let same = T::ALL
            .iter()
            .filter(|t| t.get(Lang::En) == t.get(Lang::Zh))
            .count();
        assert!(same <= 2, "{same} texts are not translated");
    }

    #[test]
    fn language_follows_the_browser() {
        assert_eq!(
            Lang::from_accept_language("zh-CN,zh;q=0.9,en;q=0.8"),
            Lang::Zh
        );
        assert_eq!(
            Lang::from_accept_language("en-US,en;q=0.9,zh;q=0.8"),
            Lang::En
        );
        assert_eq!(Lang::from_accept_language("fr-FR,zh-TW;q=0.5"), Lang::Zh);
        assert_eq!(Lang::from_accept_language(""), Lang::En);
        assert_eq!(
            Lang::Zh.f(T::ImportSummary, &["1", "2", "3"]),
            "导入 1 个，已存在 2 个，无效 3 个。"
        );
    }
}
