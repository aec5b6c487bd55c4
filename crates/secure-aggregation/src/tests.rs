//! Sessions run end to end in memory: clients and server exchange the messages as JSON, as
//! over HTTP.

use super::*;

/// A client of the test federation: its id, vector and what it does.
struct Member {
    id: String,
    scores: Vec<f64>,
    session: Option<ClientSession>,
    /// The step before which it stops answering.
    leaves_before: Step,
}

fn through_json<T: serde::Serialize + serde::de::DeserializeOwned>(value: &T) -> T {
    serde_json::from_str(&serde_json::to_string(value).unwrap()).unwrap()
}

fn vector(seed: u64, dim: usize, clip: f64) -> Vec<f64> {
    // A deterministic vector of norm about `clip` (some over it, to exercise the clip).
    (0..dim)
        .map(|i| {
            let x = ((seed * 7919 + i as u64 * 104_729) % 1000) as f64 / 1000.0 - 0.5;
            x * clip * 3.0 / (dim as f64).sqrt()
        })
        .collect()
}

const CLIP: f64 = 1.0;

struct Run {
    sum: Result<Vec<u64>>,
    /// Every JSON text the server received or served.
    transcript: String,
    contributors: usize,
}

/// Runs one session with `members`, `degree` neighbours each; `tamper` may rewrite a masked
/// input before it is sent.
fn run(
    members: &mut [Member],
    dim: usize,
    degree: usize,
    tamper: impl Fn(&str, &mut MaskedInput),
) -> Run {
    let cohort: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
    let mut server = Aggregator::new(4, &cohort, dim, degree).unwrap();
    let mut transcript = String::new();
    for step in [Step::Keys, Step::Shares, Step::Masked, Step::Unmask] {
        assert_eq!(server.step(), step);
        for member in members.iter_mut() {
            if member.leaves_before <= step {
                continue;
            }
            let view = server.view(&member.id).unwrap();
            transcript.push_str(&serde_json::to_string(&view).unwrap());
            if !view.participant {
                continue;
            }
            let view = through_json(&view);
            let message = match step {
                Step::Keys => {
                    let session = ClientSession::new(view.round, view.session).unwrap();
                    let message = session.keys();
                    member.session = Some(session);
                    message
                }
                Step::Shares => member
                    .session
                    .as_mut()
                    .unwrap()
                    .share_keys(view.roster.as_ref().unwrap())
                    .unwrap(),
                Step::Masked => {
                    let encoded = encode(&member.scores, CLIP).unwrap();
                    let mut message = member
                        .session
                        .as_mut()
                        .unwrap()
                        .mask(view.inbox.as_ref().unwrap(), &encoded)
                        .unwrap();
                    if let ClientMessage::Masked(masked) = &mut message {
                        tamper(&member.id, masked);
                    }
                    message
                }
                Step::Unmask => member
                    .session
                    .as_mut()
                    .unwrap()
                    .unmask(view.survivors.as_ref().unwrap())
                    .unwrap(),
                Step::Done => unreachable!(),
            };
            let text = serde_json::to_string(&message).unwrap();
            transcript.push_str(&text);
            let parsed: ClientMessage = serde_json::from_str(&text).unwrap();
            assert_eq!(
                server.receive(&member.id, parsed.clone()),
                Ok(Received::New)
            );
            // A retry of the same message is a replay, not a second input.
            assert_eq!(server.receive(&member.id, parsed), Ok(Received::Replay));
        }
        server.advance();
    }
    transcript.push_str(&format!("{server:?}"));
    Run {
        sum: server.unmasker().and_then(Unmasker::finish),
        transcript,
        contributors: server.contributors(),
    }
}

fn federation(n: usize, dim: usize) -> Vec<Member> {
    (0..n)
        .map(|i| Member {
            id: format!("client-{i}"),
            scores: vector(i as u64 + 1, dim, CLIP),
            session: None,
            leaves_before: Step::Done,
        })
        .collect()
}

/// The plain sum of the encoded vectors of the members who sent a masked input.
fn plain_sum(members: &[Member], dim: usize) -> Vec<i64> {
    let mut sum = vec![0i64; dim];
    for member in members.iter().filter(|m| m.leaves_before > Step::Masked) {
        for (s, e) in sum.iter_mut().zip(encode(&member.scores, CLIP).unwrap()) {
            *s += e as i64;
        }
    }
    sum
}

fn bound(clients: usize, dim: usize) -> i64 {
    let grid = dp_mechanics::grid_for(CLIP);
    let sensitivity = CLIP * (1.0 + 2f64.powi(-30)) + grid * (dim as f64).sqrt() / 2.0;
    clients as i64 * per_client_units(sensitivity, grid)
}

#[test]
fn twenty_clients_five_of_whom_drop_out_mid_round_release_the_sum_of_fifteen() {
    let dim = 300;
    // Two never send their shares and three leave before their masked input. With the complete
    // graph, two more (who did send one: their vectors are in the sum) leave before
    // unmasking. Each neighbourhood keeps its threshold (more than half) of answers.
    let mid_round = [
        (1, Step::Shares),
        (6, Step::Shares),
        (3, Step::Masked),
        (11, Step::Masked),
        (17, Step::Masked),
    ];
    for (degree, unmask_leavers) in [(12, &[][..]), (30, &[8, 14][..])] {
        let mut members = federation(20, dim);
        for &(i, leaves) in &mid_round {
            members[i].leaves_before = leaves;
        }
        for &i in unmask_leavers {
            members[i].leaves_before = Step::Unmask;
        }
        let run = run(&mut members, dim, degree, |_, _| {});
        assert_eq!(run.contributors, 15, "degree {degree}");
        let sum = decode(&run.sum.unwrap(), bound(20, dim));
        assert_eq!(sum, plain_sum(&members, dim), "degree {degree}");
    }
}

#[test]
fn the_unmasked_sum_equals_the_plain_sum_up_to_the_encodings_rounding() {
    let dim = 64;
    let mut members = federation(6, dim);
    let run = run(&mut members, dim, 4, |_, _| {});
    let grid = dp_mechanics::grid_for(CLIP);
    let sum = decode(&run.sum.unwrap(), bound(6, dim));
    let mut plain = vec![0f64; dim];
    for member in &members {
        let mut clipped = member.scores.clone();
        dp_mechanics::clip_in_place(&mut clipped, CLIP).unwrap();
        plain.iter_mut().zip(&clipped).for_each(|(p, c)| *p += c);
    }
    for (units, value) in sum.iter().zip(&plain) {
        // Each client rounds each coordinate by at most γ/2.
        assert!((*units as f64 * grid - value).abs() <= 6.0 * grid / 2.0 + 1e-12);
    }
}

#[test]
fn a_planted_vector_never_appears_in_what_the_server_holds_or_serves() {
    let dim = 48;
    let mut members = federation(5, dim);
    members[2].scores = (0..dim)
        .map(|i| if i % 2 == 0 { 0.1 } else { -0.1 })
        .collect();
    let planted = encode(&members[2].scores, CLIP).unwrap();
    let planted_json = serde_json::to_string(&MaskedInput {
        masked: planted.clone(),
    })
    .unwrap();
    let planted_b64 = &planted_json[11..planted_json.len() - 2];
    let run = run(&mut members, dim, 4, |_, _| {});
    assert!(run.sum.is_ok());
    assert!(!run.transcript.contains(planted_b64));
    // Nor any of its coordinates in decimal, as a Debug dump would print them.
    assert!(!run.transcript.contains(&planted[0].to_string()));
    assert!(!run.transcript.contains(&planted[1].to_string()));
}

#[test]
fn a_malicious_clients_out_of_range_vector_is_bounded() {
    let dim = 16;
    let mut members = federation(5, dim);
    let run = run(&mut members, dim, 4, |id, masked| {
        if id == "client-3" {
            masked.masked[0] = masked.masked[0].wrapping_add(1 << 62);
            masked.masked[1] = masked.masked[1].wrapping_sub(1 << 62);
        }
    });
    let bound = bound(5, dim);
    let sum = decode(&run.sum.unwrap(), bound);
    assert_eq!((sum[0], sum[1]), (bound, -bound));
    assert!(sum.iter().all(|s| s.abs() <= bound));
    // The other coordinates are the honest sum.
    assert_eq!(sum[2..], plain_sum(&members, dim)[2..]);
}

#[test]
fn too_many_leaving_during_unmasking_make_the_sum_unrecoverable() {
    let dim = 8;
    let mut members = federation(4, dim);
    for member in members.iter_mut().skip(1) {
        member.leaves_before = Step::Unmask;
    }
    let run = run(&mut members, dim, 4, |_, _| {});
    assert!(matches!(run.sum, Err(ProtocolError::Unrecoverable(_))));
}

#[test]
fn clients_refuse_a_server_that_breaks_the_rules() {
    let mut a = ClientSession::new(1, 9).unwrap();
    let b = ClientSession::new(1, 9).unwrap();
    let c = ClientSession::new(1, 9).unwrap();
    let keys = |s: &ClientSession| match s.keys() {
        ClientMessage::Keys(k) => k,
        _ => unreachable!(),
    };
    let neighbours = vec![
        Neighbour {
            index: 1,
            keys: keys(&b),
        },
        Neighbour {
            index: 2,
            keys: keys(&c),
        },
    ];
    // A threshold of one would let the server rebuild both secrets from different clients.
    let low = Roster {
        index: 0,
        threshold: 1,
        neighbours: neighbours.clone(),
    };
    assert!(matches!(a.share_keys(&low), Err(ProtocolError::Refused(_))));
    let lonely = Roster {
        index: 0,
        threshold: 1,
        neighbours: neighbours[..1].to_vec(),
    };
    assert!(matches!(
        a.share_keys(&lonely),
        Err(ProtocolError::Refused(_))
    ));
    let roster = Roster {
        index: 0,
        threshold: 2,
        neighbours,
    };
    a.share_keys(&roster).unwrap();
    // Unmasking before the masked input, or with a survivor that is no neighbour: refused.
    let survivors = Survivors { survivors: vec![1] };
    assert!(matches!(
        a.unmask(&survivors),
        Err(ProtocolError::Refused(_))
    ));
    // A forged packet does not decrypt.
    let forged = Inbox {
        packets: vec![Packet {
            from: 1,
            to: 0,
            ciphertext: vec![0; 82],
        }],
    };
    assert!(matches!(
        a.mask(&forged, &[0; 4]),
        Err(ProtocolError::Refused(_))
    ));
}

#[test]
fn the_server_refuses_messages_out_of_step_twice_or_from_outsiders() {
    let cohort = vec!["a".to_string(), "b".to_string(), "c".to_string()];
    let mut server = Aggregator::new(0, &cohort, 4, 2).unwrap();
    let session = ClientSession::new(0, server.session()).unwrap();
    assert_eq!(
        server.receive("z", session.keys()),
        Err(ProtocolError::NotParticipant)
    );
    server.receive("a", session.keys()).unwrap();
    let other = ClientSession::new(0, server.session()).unwrap();
    assert_eq!(
        server.receive("a", other.keys()),
        Err(ProtocolError::Conflict)
    );
    let masked = ClientMessage::Masked(MaskedInput { masked: vec![0; 4] });
    assert!(matches!(
        server.receive("b", masked),
        Err(ProtocolError::WrongStep { .. })
    ));
    assert_eq!(server.awaiting(), 2);
    server.advance();
    // c never sent keys: it is out of the session from now on.
    let view = server.view("c").unwrap();
    assert!(!view.participant && view.roster.is_none());
    assert!(server.view("z").is_none());
}

#[test]
fn a_client_that_skips_the_protocol_cannot_crash_the_server() {
    // `a` sends its shares while its neighbours do not, then a masked input without any inbox
    // (an honest client would refuse to) and an empty unmasking: each is taken or refused as
    // a message, and the session ends unrecoverable, not in a panic.
    let cohort: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let mut server = Aggregator::new(0, &cohort, 4, 2).unwrap();
    let mut sessions: Vec<ClientSession> = (0..3)
        .map(|_| ClientSession::new(0, server.session()).unwrap())
        .collect();
    for (id, session) in cohort.iter().zip(&sessions) {
        server.receive(id, session.keys()).unwrap();
    }
    server.advance();
    let roster = server.view("a").unwrap().roster.unwrap();
    let shares = sessions[0].share_keys(&roster).unwrap();
    server.receive("a", shares).unwrap();
    server.advance();
    assert_eq!(server.view("a").unwrap().inbox.unwrap().packets.len(), 0);
    let masked = ClientMessage::Masked(MaskedInput { masked: vec![7; 4] });
    assert_eq!(server.receive("a", masked), Ok(Received::New));
    server.advance();
    let empty = ClientMessage::Unmask(Unmasking { shares: Vec::new() });
    assert_eq!(server.receive("a", empty), Ok(Received::New));
    server.advance();
    assert!(matches!(
        server.unmasker().and_then(Unmasker::finish),
        Err(ProtocolError::Unrecoverable(_))
    ));
}
