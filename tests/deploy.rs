//! What can be checked of `deploy/` without a Google project: the Firestore files parse,
//! agree with each other and with the store's document layout, and the setup script is
//! valid bash.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The time, map and bookkeeping fields `src/store/firestore.rs` writes that no query
/// ever uses: all must be exempt from indexing.
const UNQUERIED: &[&str] = &[
    "authenticated_at",
    "created_at",
    "expires_at",
    "expires_at_ms",
    "grace_until",
    "last_seen_at",
    "login_claim_owner",
    "login_claim_until",
    "reason",
    "rotated_at",
    "successor",
    "vault",
];

#[test]
fn index_exemptions_and_ttl_cover_the_session_documents() {
    let json: serde_json::Value =
        serde_json::from_str(&read("deploy/firestore/firestore.indexes.json")).unwrap();
    assert_eq!(json["indexes"], serde_json::json!([]));
    let overrides = json["fieldOverrides"].as_array().unwrap();
    let exempt: BTreeSet<&str> = overrides
        .iter()
        .filter(|o| {
            o["collectionGroup"] == "sessiongate_sessions" && o["indexes"] == serde_json::json!([])
        })
        .map(|o| o["fieldPath"].as_str().unwrap())
        .collect();
    assert_eq!(
        exempt,
        UNQUERIED.iter().copied().collect(),
        "index exemptions drifted from the document layout"
    );
    let ttl: Vec<&str> = overrides
        .iter()
        .filter(|o| o["ttl"] == true)
        .map(|o| o["fieldPath"].as_str().unwrap())
        .collect();
    assert_eq!(
        ttl,
        vec!["expires_at"],
        "exactly one TTL field, the Timestamp"
    );
    for src in ["src/store/firestore.rs"] {
        let code = read(src);
        for field in UNQUERIED {
            assert!(
                code.contains(&format!("    {field}:")),
                "{src} no longer writes {field}"
            );
        }
    }
}

#[test]
fn setup_script_is_valid_bash_and_matches_the_index_file() {
    let status = std::process::Command::new("bash")
        .args(["-n", "deploy/firestore/setup.sh"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(status.success(), "bash -n deploy/firestore/setup.sh failed");
    let script = read("deploy/firestore/setup.sh");
    let start = script.find("SESSIONS_UNINDEXED_FIELDS=(").unwrap();
    let list: BTreeSet<&str> = script[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.trim() != ")")
        .map(str::trim)
        .collect();
    assert_eq!(
        list,
        UNQUERIED.iter().copied().collect(),
        "setup.sh and firestore.indexes.json disagree"
    );
    assert!(script.contains("--enable-ttl") && script.contains("roles/datastore.user"));
}

#[test]
fn security_rules_deny_every_client() {
    let rules = read("deploy/firestore/firestore.rules");
    assert!(rules.contains("rules_version = '2';"));
    assert!(rules.contains("match /{document=**}"));
    let allows: Vec<&str> = rules
        .lines()
        .filter(|l| l.trim_start().starts_with("allow"))
        .collect();
    assert!(!allows.is_empty());
    for line in allows {
        assert!(
            line.trim_end().ends_with("if false;"),
            "a rule grants access: {line}"
        );
    }
}
