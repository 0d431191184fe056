//! Property tests of the relay core: token parsing never panics and never accepts a token
//! that was tampered with; call state transitions, applied in random order and concurrently,
//! always end in one consistent outcome with one history record per party.

use proptest::prelude::*;
use std::sync::Arc;
use switchboard_protocol::pb::{CallMedia, CallOutcome, CallState, PartyStatus};
use switchboard_relay::auth::{Claims, Minter};
use switchboard_relay::calls::{self, Actor};
use switchboard_relay::{LocalBus, Node, RelayConfig, Verifier, VerifyKey};

const SECRET: &[u8] = b"a-property-test-secret-of-32-bytes!!";

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn verifier() -> Verifier {
    Verifier::new(&VerifyKey::Hmac(SECRET.to_vec()), 0).expect("verifier")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(2000)))]

    /// Arbitrary strings are refused with a token error, never a panic.
    #[test]
    fn arbitrary_tokens_are_refused(token in ".{0,400}") {
        let err = verifier().verify(&token).expect_err("garbage verified");
        prop_assert!(err.code().as_str_name().starts_with("ERROR_CODE_TOKEN"));
    }

    /// A valid token with any byte changed (or cut) does not verify as someone else.
    #[test]
    fn tampered_tokens_never_verify(at in any::<usize>(), with in any::<u8>(), cut in any::<bool>()) {
        let token = Minter::hmac(SECRET).mint(&Claims::new("alice", &["demo"], 600)).expect("mint");
        let mut bytes = token.clone().into_bytes();
        let i = at % bytes.len();
        if cut {
            bytes.truncate(i);
        } else {
            bytes[i] = with;
        }
        let tampered = String::from_utf8_lossy(&bytes).into_owned();
        match verifier().verify(&tampered) {
            // Base64url has a few equivalent encodings of the final bits: same claims only.
            Ok(claims) => prop_assert_eq!(claims, verifier().verify(&token).expect("original")),
            Err(e) => prop_assert!(e.code().as_str_name().starts_with("ERROR_CODE_TOKEN")),
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Accept(usize),
    Reject(usize),
    Cancel,
    End(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..3).prop_map(Op::Accept),
        (0usize..3).prop_map(Op::Reject),
        Just(Op::Cancel),
        (0usize..4).prop_map(Op::End),
    ]
}

fn actor(user: &str, session: &str) -> Actor {
    Actor { user: user.into(), session: session.into(), name: user.into() }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(300)))]

    /// Random operations from the caller and two callees (two devices each), some of them
    /// concurrent: the call ends at most once, with an outcome that fits what happened, and
    /// each party's history holds exactly one record of it.
    #[test]
    fn call_transitions_stay_consistent(
        rounds in proptest::collection::vec(proptest::collection::vec(op(), 1..4), 1..6),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let config = RelayConfig { ring_timeout: std::time::Duration::from_secs(3600), ..RelayConfig::default() };
            let node = Node::start(config, verifier(), Arc::new(LocalBus::new())).await.expect("node");
            // bob and carol are online: stand-ins for their devices answer the rings.
            for user in ["bob", "carol"] {
                let mut inbox = node.bus().subscribe(format!("sb.user.{user}")).await.expect("sub");
                let bus = node.bus().clone();
                tokio::spawn(async move {
                    while let Some(msg) = futures_util::StreamExt::next(&mut inbox).await {
                        if let Some(reply) = msg.reply {
                            let _ = bus.publish(reply, bytes::Bytes::from_static(b"1")).await;
                        }
                    }
                });
            }
            let callees = ["bob".to_owned(), "carol".to_owned()];
            let call = calls::invite(node.context(), &actor("alice", "a1"), &callees, CallMedia::Audio).await.expect("invite");
            let devices = [("bob", "b1"), ("bob", "b2"), ("carol", "c1")];
            let mut ended_seen = false;
            for round in rounds {
                // One round's operations run concurrently.
                let futs = round.iter().map(|op| {
                    let node = node.clone();
                    let id = call.id.clone();
                    let op = op.clone();
                    async move {
                        match op {
                            Op::Accept(d) => calls::answer(node.context(), &actor(devices[d].0, devices[d].1), &id, true).await,
                            Op::Reject(d) => calls::answer(node.context(), &actor(devices[d].0, devices[d].1), &id, false).await,
                            Op::Cancel => calls::cancel(node.context(), &actor("alice", "a1"), &id).await,
                            Op::End(d) => {
                                let (u, s) = if d == 3 { ("alice", "a1") } else { devices[d] };
                                calls::hang_up(node.context(), &actor(u, s), &id).await
                            }
                        }
                    }
                });
                let results = futures_util::future::join_all(futs).await;
                let now = calls::get(node.context(), &call.id).await.expect("call");
                for r in &results {
                    if let Err(e) = r {
                        // Refusals are rule refusals, never bus failures.
                        assert_eq!(e.code(), switchboard_protocol::ErrorCode::CallState, "{e}");
                    }
                }
                if ended_seen {
                    assert!(results.iter().all(|r| r.is_err()), "nothing changes an ended call");
                }
                if now.state() == CallState::Ended {
                    ended_seen = true;
                    let accepted = now.parties.iter().any(|p| p.status() == PartyStatus::Accepted);
                    match now.outcome() {
                        CallOutcome::Completed => assert!(now.answered_at_ms > 0 && accepted),
                        CallOutcome::Cancelled | CallOutcome::Rejected => assert_eq!(now.answered_at_ms, 0),
                        other => panic!("unexpected outcome {other:?}"),
                    }
                    assert!(!now.parties.iter().any(|p| p.status() == PartyStatus::Ringing));
                }
                if now.answered_at_ms > 0 {
                    assert!(now.parties.iter().any(|p| p.status() == PartyStatus::Accepted));
                }
                // One accepting device per user at most.
                for user in ["bob", "carol"] {
                    let p = now.parties.iter().find(|p| p.user == user).expect("party");
                    if p.status() == PartyStatus::Accepted {
                        assert!(!p.session.is_empty());
                    }
                }
            }
            for user in ["alice", "bob", "carol"] {
                let (records, _) = calls::history(node.context(), user, None, 10).await.expect("history");
                assert_eq!(records.len(), usize::from(ended_seen), "{user}: one record per ended call");
            }
        });
    }
}
