//! A stable hash of a component's spec: what the runtime labels its objects with, so that
//! "unchanged" and "changed outside mcp" can be told without comparing whole specs.

use sha2::{Digest, Sha256};

use super::Component;

/// Hex digest (16 chars) of the component's canonical JSON (object keys sorted, defaults omitted).
pub fn spec_hash(component: &Component) -> String {
    // serde_json::Value keeps objects in a BTreeMap, so re-serializing a Value sorts every key.
    let mut value = serde_json::to_value(component).expect("a component always serializes");
    // The agent probes; the runtime never sees the health check.
    if let Some(fields) = value.as_object_mut() {
        fields.remove("health");
    }
    let canonical = value.to_string();
    hex_prefix(&Sha256::digest(format!("mcp-spec-v1\n{canonical}").as_bytes()), 16)
}

/// The hash of a `pull = "always"` component: its spec and the registry digest its tag
/// pointed at when the deploy asked.
pub fn pulled_spec_hash(spec_hash: &str, digest: &str) -> String {
    hex_prefix(&Sha256::digest(format!("mcp-spec-v1+digest\n{spec_hash}\n{digest}").as_bytes()), 16)
}

/// The first `chars` hex digits of a digest: the short names mcp writes (spec and content
/// hashes, VM ids, interface names).
pub fn hex_prefix(digest: &[u8], chars: usize) -> String {
    let mut s: String = digest.iter().take(chars.div_ceil(2)).map(|b| format!("{b:02x}")).collect();
    s.truncate(chars);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comp() -> Component {
        Component {
            name: "web".into(),
            image: "localhost/x:1".into(),
            ports: vec!["127.0.0.1:8080:80".into()],
            ..Default::default()
        }
    }

    #[test]
    fn stable_across_calls_and_env_order() {
        let mut a = comp();
        a.env.insert("B".into(), "2".into());
        a.env.insert("A".into(), "1".into());
        let mut b = comp();
        b.env.insert("A".into(), "1".into());
        b.env.insert("B".into(), "2".into());
        assert_eq!(spec_hash(&a), spec_hash(&b));
        assert_eq!(spec_hash(&a).len(), 16);
    }

    #[test]
    fn changes_with_any_field() {
        let base = spec_hash(&comp());
        let mut c = comp();
        c.image = "localhost/x:2".into();
        assert_ne!(spec_hash(&c), base);
        let mut c = comp();
        c.cmd = vec!["sh".into()];
        assert_ne!(spec_hash(&c), base);
        let mut c = comp();
        c.restart = Some("always".into());
        assert_ne!(spec_hash(&c), base);
        // ...but the health check, which only the agent reads.
        let mut c = comp();
        c.health = Some(crate::plan::Health { tcp: Some("127.0.0.1:8080".into()), ..Default::default() });
        assert_eq!(spec_hash(&c), base);
    }

    #[test]
    fn pinned_value() {
        // The hash is a contract with containers already labelled on nodes: it must not drift
        // between releases unless PLAN_VERSION changes.
        assert_eq!(spec_hash(&comp()), "ca4b5625cbbc077a");
        let json = serde_json::to_value(comp()).unwrap().to_string();
        assert_eq!(
            json,
            r#"{"image":"localhost/x:1","kind":"container","name":"web","ports":["127.0.0.1:8080:80"]}"#
        );
    }
}
