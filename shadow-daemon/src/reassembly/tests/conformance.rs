//! The request-framing conformance corpus through extraction, responses as evidence (TC): for
//! every case, exactly the requests listed are replayed and every other request is dropped under
//! the reason listed. The same corpus runs against nginx in tier B (`framing_conformance_b`).

use super::{super::*, support::*};

#[path = "../../../../tests/src/corpus.rs"]
#[allow(dead_code, unreachable_pub)] // the tests crate's module, public there
mod corpus;

use corpus::Step;

#[test]
fn corpus_cases_replay_exactly_or_drop_by_name() {
    let cases = corpus::load();
    assert!(cases.len() >= 20, "the corpus lost cases: {}", cases.len());
    for (i, case) in cases.iter().enumerate() {
        let mut ex = Extractor::new(ExtractorConfig { await_response: true, ..small_cfg() });
        let mut c = Conn::new(i % 2 == 1, 42000 + i as u16, 1000, 5000);
        let segs: Vec<_> = case
            .steps()
            .into_iter()
            .map(|s| match s {
                Step::Client(b) => c.client(&b),
                Step::Server(b) => c.server(&b),
                Step::ClientFin => c.client_fin(),
                Step::ServerFin => c.server_fin(),
                Step::ServerRst => c.server_rst(),
            })
            .collect();
        let mut ev = feed(&mut ex, segs);
        ex.clear(DropReason::Timeout, &mut ev);
        let name = &case.name;
        let got = raws(&ev);
        assert_eq!(
            got.iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect::<Vec<_>>(),
            case.replay().iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect::<Vec<_>>(),
            "case {name}: replayed requests"
        );
        let st = ex.stats();
        for r in DropReason::ALL {
            let want = case.dropped.get(r.as_str()).copied().unwrap_or(0);
            assert_eq!(st.requests.dropped(r), want, "case {name}: requests dropped as {}", r.as_str());
        }
        for label in case.dropped.keys() {
            assert!(DropReason::ALL.iter().any(|r| r.as_str() == label), "case {name}: unknown reason {label}");
        }
        assert!(st.reconciles(), "case {name}: {st:?}");
        assert_eq!(st.requests.in_progress, 0, "case {name}");
    }
}

#[test]
fn corpus_repeat_macro_expands() {
    assert_eq!(corpus::expand("a<<3*xy>>b<<0*z>>"), b"axyxyxyb");
    assert_eq!(corpus::expand("plain\r\n"), b"plain\r\n");
}
