//! Invariants of the balancer, over random scenarios.

use proptest::prelude::*;
use weft_balance::{
    pick::distinct,
    sim::{EndpointSpec, Scenario, run},
};

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Equal pods share within ±10 %, at any rate and service time.
    #[test]
    fn equal_pods_share_evenly(n in 2usize..6, rate in 300.0f64..3000.0, service in 0.1f64..2.0, seed in any::<u64>()) {
        let spec = EndpointSpec { service_ms: service, workers: 2, ..Default::default() };
        let mut s = Scenario::new(vec![spec; n], rate);
        s.duration_s = 40.0;
        s.seed = seed;
        let r = run(&s);
        let fair = 1.0 / n as f64;
        for i in 0..n {
            prop_assert!((r.share(i) - fair).abs() <= fair * 0.10, "endpoint {} of {}: {}", i, n, r);
        }
    }

    /// A strictly slower pod (beyond the tie band) never gets more than a
    /// faster one.
    #[test]
    fn slower_never_gets_more(delays in proptest::collection::vec(0.0f64..30.0, 2..5), rate in 300.0f64..2500.0, seed in any::<u64>()) {
        let eps: Vec<EndpointSpec> = delays.iter().map(|&d| EndpointSpec::delayed(d)).collect();
        let mut s = Scenario::new(eps, rate);
        s.duration_s = 40.0;
        s.seed = seed;
        let r = run(&s);
        // Each endpoint's whole latency: its service time and its delay.
        let total = |i: usize| EndpointSpec::delayed(delays[i]).service_ms + delays[i];
        for a in 0..delays.len() {
            for b in 0..delays.len() {
                // Strictly slower beyond the picker's tie band (10 %, within
                // which equal pods that measure apart split evenly) and the
                // noise of the estimates: 25 % slower.
                if total(a) > total(b) * 1.25 {
                    prop_assert!(r.share(a) <= r.share(b) * 1.02 + 0.002,
                        "{:?}: endpoint {} ({} ms) got {:.2} %, endpoint {} ({} ms) {:.2} %",
                        delays, a, delays[a], r.share(a) * 100.0, b, delays[b], r.share(b) * 100.0);
                }
            }
        }
    }

    /// No endpoint is starved for ever: each one is tried at least every
    /// probe cap, however slow or failing.
    #[test]
    fn nobody_is_starved(delay in 0.0f64..200.0, fail in 0.0f64..1.0, seed in any::<u64>()) {
        let bad = EndpointSpec { delay_ms: delay, fail_rate: fail, ..Default::default() };
        let mut s = Scenario::new(vec![EndpointSpec::default(), EndpointSpec::default(), bad], 500.0);
        s.duration_s = 60.0;
        s.seed = seed;
        let r = run(&s);
        for (i, gap) in r.longest_gap_s.iter().enumerate() {
            prop_assert!(*gap <= s.probe_cap_s + 0.5, "endpoint {} waited {:.1} s: {:?}", i, gap, r.longest_gap_s);
        }
    }

    /// The endpoints drawn for one pick are distinct and in range.
    #[test]
    fn draws_are_distinct(n in 1usize..1000, k in 1usize..4, seed in any::<u64>()) {
        let k = k.min(n);
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut out = [0usize; 4];
        distinct(&mut rng, n, &mut out[..k]);
        for a in 0..k {
            prop_assert!(out[a] < n);
            for b in 0..a {
                prop_assert_ne!(out[a], out[b]);
            }
        }
    }
}
