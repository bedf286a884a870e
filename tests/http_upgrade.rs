//! Each HTTP example under the real `einhorn-master`: repeated upgrades while a keep-alive
//! load client hammers the shared socket finish with zero failed requests and zero
//! connection errors; every upgrade replaces every pid; a slow request in flight at an
//! upgrade completes with 200; old workers exit 0 once drained.

mod http_support;

use http_support::{UpgradeOutcome, UpgradePlan, upgrades_under_load};

for_each_framework!(upgrades_under_keep_alive_load_lose_nothing);

fn upgrades_under_keep_alive_load_lose_nothing(example: &str) {
    let plan = UpgradePlan {
        slow_request: true,
        ..UpgradePlan::new(2, 5, 16)
    };
    let UpgradeOutcome {
        report,
        generations,
        master,
    } = upgrades_under_load(example, &plan);
    eprintln!("{example}: {plan:?}: {report}");
    assert_eq!(report.failed(), 0, "{report}\n{}", master.master.output());
    assert!(
        report.ok >= 100,
        "too little traffic to mean anything: {report}"
    );
    for (i, generation) in generations.iter().enumerate() {
        assert!(
            generation.iter().any(|p| report.pids.contains_key(p)),
            "generation {i} ({generation:?}) never answered: {report}"
        );
    }
}
