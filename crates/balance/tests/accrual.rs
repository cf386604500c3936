//! Failure accrual in the simulator: a failing endpoint is ejected and only
//! probed, comes back when it recovers, and never too many go at once.

use weft_balance::{
    Accrual,
    sim::{EndpointSpec, Scenario, run},
};

fn failing(until_s: f64) -> EndpointSpec {
    EndpointSpec {
        fail_rate: 1.0,
        fail_until_s: until_s,
        ..Default::default()
    }
}

fn with_accrual(endpoints: Vec<EndpointSpec>, rate: f64) -> Scenario {
    let mut s = Scenario::new(endpoints, rate);
    s.accrual = Accrual::default();
    s
}

#[test]
fn a_failing_replica_is_ejected_and_only_probed() {
    for rate in [500.0, 2000.0] {
        let s = with_accrual(
            vec![EndpointSpec::default(), EndpointSpec::default(), failing(f64::INFINITY)],
            rate,
        );
        let on = run(&s);
        let mut off_s = s.clone();
        off_s.accrual = Accrual::off();
        let off = run(&off_s);
        println!("accrual on  {on}\naccrual off {off}");
        // 50 s measured: a probe now and then (after 1, 2, 4 ... 30 s of
        // ejection, and no more often than the picker's own probes).
        assert!(on.calls[2] <= 6, "{on}");
        assert!(on.ejections >= 2, "ejected again after a failed probe: {on}");
        assert!(on.calls[2] <= off.calls[2], "accrual {on} vs scores alone {off}");
        assert_eq!(on.unpicked, 0);
    }
}

#[test]
fn an_ejected_replica_comes_back_when_it_recovers() {
    // Fails for the first 20 s, then is healthy; counted from 50 s on.
    let mut s = with_accrual(
        vec![EndpointSpec::default(), EndpointSpec::default(), failing(20.0)],
        500.0,
    );
    s.duration_s = 90.0;
    s.warmup_s = 50.0;
    let r = run(&s);
    println!("{r}");
    assert!(r.ejections >= 1, "{r}");
    assert!(r.share(2) > 0.25, "back in service with its share: {r}");
    assert_eq!(r.failures, 0, "{r}");
}

#[test]
fn the_panic_threshold_keeps_most_replicas_in_service() {
    // All three fail: at most one may be out, so calls still find endpoints.
    let s = with_accrual(vec![failing(f64::INFINITY); 3], 500.0);
    let r = run(&s);
    println!("{r}");
    assert_eq!(r.unpicked, 0, "{r}");
    assert!(r.calls.iter().filter(|&&c| c > 1000).count() >= 2, "{r}");
    // Two of four fail: both may go, the healthy two take nearly everything.
    let s = with_accrual(
        vec![
            EndpointSpec::default(),
            EndpointSpec::default(),
            failing(f64::INFINITY),
            failing(f64::INFINITY),
        ],
        500.0,
    );
    let r = run(&s);
    println!("{r}");
    assert!(r.calls[2] + r.calls[3] <= 20, "{r}");
}
