//! The lease channel (`LeaseChannel`): Acquire and Release as messages on one stream keep every
//! guarantee of the unary calls, across two instances sharing one database, on every backend.

use std::collections::{HashMap, HashSet};

use crate::common::*;
use cco_contracts::allocator::v1 as pb;
use pb::lease_command::Command;
use pb::lease_reply::Reply;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// An open channel: commands go in, replies come out.
struct Channel {
    tx: mpsc::Sender<pb::LeaseCommand>,
    replies: tonic::Streaming<pb::LeaseReply>,
}

async fn open(c: &mut AllocClient) -> Result<Channel, tonic::Status> {
    let (tx, rx) = mpsc::channel(64);
    let replies = c.lease_channel(ReceiverStream::new(rx)).await?.into_inner();
    Ok(Channel { tx, replies })
}

impl Channel {
    /// Sends every command at once, then collects one reply per command, by id.
    async fn run(&mut self, commands: Vec<(u64, Command)>) -> HashMap<u64, Reply> {
        let n = commands.len();
        for (id, command) in commands {
            self.tx
                .send(pb::LeaseCommand {
                    id,
                    command: Some(command),
                })
                .await
                .expect("channel open");
        }
        let mut out = HashMap::new();
        while out.len() < n {
            let r = self
                .replies
                .message()
                .await
                .expect("reply")
                .expect("channel still open");
            assert!(
                out.insert(r.id, r.reply.expect("a reply")).is_none(),
                "two replies for command {}",
                r.id
            );
        }
        out
    }

    async fn one(&mut self, id: u64, command: Command) -> Reply {
        self.run(vec![(id, command)]).await.remove(&id).unwrap()
    }
}

fn error(r: &Reply) -> (Code, &str) {
    match r {
        Reply::Error(e) => (Code::from(e.code), e.message.as_str()),
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// 40 concurrent Acquires over two channels on two instances drain a 20-extension pool
/// exactly (20 distinct extensions, 20 "pool empty" replies), each command answered once by
/// id; a repeated request id replays its lease; Releases free every lease once and a stale
/// one changes nothing; bad input and another tenant get an error reply naming the problem
/// and the channel carries on.
async fn lease_channel_keeps_the_unary_guarantees(b: Backend) {
    let db = TestDb::new(b).await;
    let a1 = TestApp::spawn(settings(&db.url)).await;
    let a2 = TestApp::spawn(settings(&db.url)).await;
    let mut pool = a1.pool(ADMIN).await;
    let numbers: Vec<String> = (0..20).map(|i| format!("80{i:02}")).collect();
    import(
        &mut pool,
        "t1",
        &numbers.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    let mut ch = [
        open(&mut a1.alloc(CALLER).await).await.unwrap(),
        open(&mut a2.alloc(PEER).await).await.unwrap(),
    ];
    let acquire =
        |i: u64| Command::Acquire(acquire_req("t1", &format!("c{i}"), &format!("req-{i}")));
    let (first, second) = ch.split_at_mut(1);
    let (r1, r2) = tokio::join!(
        first[0].run((0..20).map(|i| (i, acquire(i))).collect()),
        second[0].run((20..40).map(|i| (i, acquire(i))).collect()),
    );
    let mut granted = Vec::new();
    let mut empty = 0;
    for (id, r) in r1.into_iter().chain(r2) {
        match r {
            Reply::Acquire(a) => {
                assert!(!a.replayed);
                let l = a.lease.unwrap();
                assert_eq!(
                    l.collector_id,
                    format!("c{id}"),
                    "reply matched to its command"
                );
                granted.push((id, l));
            }
            other => {
                let (code, message) = error(&other);
                assert_eq!(code, Code::ResourceExhausted, "{message}");
                assert!(message.contains("pool empty"), "{message}");
                empty += 1;
            }
        }
    }
    assert_eq!((granted.len(), empty), (20, 20));
    let distinct: HashSet<_> = granted
        .iter()
        .map(|(_, l)| l.extension_id.clone())
        .collect();
    assert_eq!(distinct.len(), 20, "two leases on one extension");

    // The same request id again, on the other instance: the same lease, replayed.
    let (id, l) = &granted[0];
    let Reply::Acquire(again) = ch[1].one(100, acquire(*id)).await else {
        panic!("replay answered with an error");
    };
    assert!(again.replayed);
    assert_eq!(again.lease.unwrap().lease_id, l.lease_id);

    // Bad input names the field; another tenant is refused to a scoped key; the channel
    // stays usable after both.
    let bad = acquire_req("t1", "", "req-bad");
    let r = ch[0].one(101, Command::Acquire(bad)).await;
    let (code, message) = error(&r);
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.starts_with("collector_id"), "{message}");
    let r = ch[0]
        .one(102, Command::Release(pb::ReleaseRequest::default()))
        .await;
    assert!(error(&r).1.starts_with("lease_id"), "{:?}", error(&r));
    let mut scoped = open(&mut a1.alloc(SCOPED).await).await.unwrap();
    let r = scoped.one(1, acquire(103)).await;
    assert_eq!(error(&r).0, Code::PermissionDenied, "{:?}", error(&r));

    // Every lease released once, half on each instance; a second release is stale.
    let release = |l: &pb::Lease| {
        Command::Release(pb::ReleaseRequest {
            lease_id: l.lease_id.clone(),
            fencing_token: l.fencing_token,
            reason: pb::ReleaseReason::CallEnded.into(),
            tenant_id: String::new(),
        })
    };
    let (even, odd): (Vec<_>, Vec<_>) = granted.iter().partition(|(id, _)| id % 2 == 0);
    let (first, second) = ch.split_at_mut(1);
    let (r1, r2) = tokio::join!(
        first[0].run(even.iter().map(|(id, l)| (*id, release(l))).collect()),
        second[0].run(odd.iter().map(|(id, l)| (*id, release(l))).collect()),
    );
    for r in r1.values().chain(r2.values()) {
        assert!(matches!(r, Reply::Release(r) if r.released), "{r:?}");
    }
    let Reply::Release(stale) = ch[0].one(200, release(&granted[0].1)).await else {
        panic!("a stale release is not an error");
    };
    assert!(!stale.released);

    // A command with nothing in it names the field.
    ch[0]
        .tx
        .send(pb::LeaseCommand {
            id: 201,
            command: None,
        })
        .await
        .unwrap();
    let r = ch[0].replies.message().await.unwrap().unwrap();
    assert_eq!(r.id, 201);
    let (code, message) = error(r.reply.as_ref().unwrap());
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.starts_with("command"), "{message}");

    // The client closes its side with commands in flight: every one is answered, then the
    // stream ends cleanly.
    let [c0, c1] = ch;
    for id in 300..310 {
        c0.tx
            .send(pb::LeaseCommand {
                id,
                command: Some(acquire(id)),
            })
            .await
            .unwrap();
    }
    let Channel { tx, mut replies } = c0;
    drop(tx);
    let mut answered = HashSet::new();
    while let Some(r) = replies.message().await.expect("a clean end") {
        assert!(matches!(r.reply, Some(Reply::Acquire(_))), "{r:?}");
        answered.insert(r.id);
    }
    assert_eq!(answered, (300..310).collect::<HashSet<_>>());

    // Shutting an instance down ends its open channel cleanly (no error, no waiting out the
    // grace period) once what is in flight has answered.
    let Channel {
        tx: _keep_open,
        replies: mut open_on_a2,
    } = c1;
    let (end, ()) = tokio::join!(open_on_a2.message(), a2.shutdown());
    assert!(matches!(end, Ok(None)), "{end:?}");

    let inspect = Inspect::new(&db.url).await;
    assert_eq!(inspect.live("t1").await, (10, 10));
    let replayed = format!("req-{}", granted[0].0);
    assert_eq!(inspect.leases_for_request("t1", &replayed).await, 1);
    assert_no_overlaps(&inspect.intervals().await);
    inspect.close().await;
    drop(scoped);
    a1.shutdown().await;
}

/// Every command on a channel is charged to the key's rate limit, as a unary call would be:
/// a key allowed a burst of 5 opens a channel (one token) and gets 4 commands through; the
/// rest are refused with the rate-limit message and the channel carries on.
async fn lease_channel_commands_count_against_the_rate_limit(b: Backend) {
    let db = TestDb::new(b).await;
    let mut s = settings(&db.url);
    s.auth.rate_limit_per_second = 1;
    s.auth.rate_limit_burst = 5;
    let app = TestApp::spawn(s).await;
    let mut ch = open(&mut app.alloc(CALLER).await).await.unwrap();
    let replies = ch
        .run(
            (0..10)
                .map(|i| {
                    (
                        i,
                        Command::Release(pb::ReleaseRequest {
                            lease_id: uuid::Uuid::new_v4().to_string(),
                            fencing_token: 1,
                            reason: 0,
                            tenant_id: String::new(),
                        }),
                    )
                })
                .collect(),
        )
        .await;
    let mut limited = 0;
    for r in replies.values() {
        let (code, message) = error(r);
        if code == Code::ResourceExhausted {
            assert!(message.starts_with("rate limit"), "{message}");
            limited += 1;
        } else {
            assert_eq!(code, Code::NotFound, "{message}");
        }
    }
    // A token may come back while the commands run (one per second).
    assert!((5..=6).contains(&limited), "{limited} limited");
    drop(ch);
    app.shutdown().await;
}

/// Opening a channel needs a service key: no key is unauthenticated, and a person's token
/// (checked only when the channel opens, so it could outlive its expiry) is refused even for
/// an admin, who may call Acquire.
async fn lease_channel_needs_a_service_key(b: Backend) {
    const SECRET: &str = "lease-channel-test-secret-0123456789";
    let db = TestDb::new(b).await;
    let mut s = settings(&db.url);
    s.auth.jwt.secret = secrecy::SecretString::from(SECRET);
    let app = TestApp::spawn(s).await;
    let mut nobody = app.alloc("not-a-key").await;
    let e = open(&mut nobody).await.err().expect("refused");
    assert_eq!(e.code(), Code::Unauthenticated);
    let token = cco_platform::jwt::mint_person(
        SECRET,
        &cco_platform::jwt::Person {
            tenants: vec!["t1".into()],
            role: "admin".into(),
            collector_id: None,
            sub: None,
            issuer: String::new(),
            audience: String::new(),
            ttl_seconds: 3_600,
        },
    )
    .unwrap();
    let mut person = app.alloc(&token).await;
    let e = person
        .acquire(acquire_req("t1", "c1", "r1"))
        .await
        .expect_err("an empty pool");
    assert_eq!(
        e.code(),
        Code::ResourceExhausted,
        "an admin may Acquire: {e:?}"
    );
    let e = open(&mut person).await.err().expect("refused");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("service keys"), "{}", e.message());
    app.shutdown().await;
}

cco_platform::on_every_backend!(
    lease_channel_keeps_the_unary_guarantees,
    lease_channel_needs_a_service_key,
    lease_channel_commands_count_against_the_rate_limit,
);
