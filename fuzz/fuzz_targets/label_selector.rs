//! Label selectors (JSON `LabelSelector`): compiling and matching never panic, and label keys
//! and values are checked without panicking.
#![no_main]

use flowwatch::inventory::label_rules;
use flowwatch::policy::{Labels, Selector};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(selector) = serde_json::from_slice::<LabelSelector>(data) else {
        if let Ok(s) = std::str::from_utf8(data) {
            let _ = label_rules::check_key(s);
            let _ = label_rules::check_value(s);
        }
        return;
    };
    for (k, v) in selector.match_labels.iter().flatten() {
        let _ = label_rules::check_key(k);
        let _ = label_rules::check_value(v);
    }
    if let Ok(compiled) = Selector::compile(&selector) {
        let labels: Labels = selector.match_labels.clone().unwrap_or_default();
        let _ = compiled.matches(&labels);
        let _ = compiled.matches(&Labels::new());
    }
});
