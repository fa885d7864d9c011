//! Decoding snapshot files object by object.

use super::*;

const SVC: &str = "apiVersion: v1
kind: Service
metadata: {namespace: ns, name: good}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
";

fn render(text: &str) -> RenderInput {
    RenderInput::parse(text, "node-a").expect("readable")
}

fn service_keys(r: &RenderInput) -> Vec<String> {
    let mut keys: Vec<String> = r.tracker.table().plans().map(|(k, _)| k.service.to_string()).collect();
    keys.dedup();
    keys
}

#[test]
fn a_type_error_names_the_object_and_field_and_the_rest_is_used() {
    let text = format!(
        "{SVC}---
apiVersion: v1
kind: Service
metadata: {{namespace: ns, name: bad}}
spec: {{clusterIP: 10.96.0.2, ports: [{{port: http}}]}}
"
    );
    let r = render(&text);
    assert_eq!(service_keys(&r), ["ns/good"]);
    assert_eq!(r.errors.len(), 1);
    let e = r.errors[0].to_string();
    assert!(
        e.starts_with("Service ns/bad: spec.ports[0].port: invalid type: string \"http\""),
        "{e}"
    );
    assert!(e.ends_with("(document 2)"), "{e}");
}

#[test]
fn a_list_item_with_a_type_error_is_reported_and_the_other_items_are_used() {
    // kubectl writes `items` before `kind`.
    let text = "apiVersion: v1
items:
- apiVersion: v1
  kind: Service
  metadata: {namespace: ns, name: good}
  spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
- apiVersion: v1
  kind: Service
  metadata: {namespace: ns, name: bad}
  spec: {clusterIP: 10.96.0.2, ports: [{port: 80, nodePort: [1]}]}
- apiVersion: v1
  kind: ConfigMap
  metadata: {namespace: ns, name: cm}
kind: List
metadata: {resourceVersion: ''}
";
    let r = render(text);
    assert_eq!(service_keys(&r), ["ns/good"]);
    let e = r.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n");
    assert!(
        e.starts_with("Service ns/bad: spec.ports[0].nodePort: invalid type: sequence")
            && e.ends_with("(document 1, items[1])"),
        "{e}"
    );
    assert_eq!(r.skipped.get("v1 ConfigMap"), Some(&1));
}

#[test]
fn items_of_a_document_that_is_not_a_list_are_not_used() {
    let text = "apiVersion: v1
items:
- apiVersion: v1
  kind: Service
  metadata: {namespace: ns, name: hidden}
  spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
kind: ConfigMap
metadata: {name: cm}
";
    let r = render(text);
    assert!(service_keys(&r).is_empty());
    assert_eq!(r.skipped.get("v1 ConfigMap"), Some(&1));
}

#[test]
fn a_rejected_object_is_reported_with_its_field() {
    let text = format!(
        "{SVC}---
apiVersion: v1
kind: Service
metadata: {{namespace: ns, name: \"evil\\n-A INPUT -j ACCEPT\"}}
spec: {{clusterIP: 10.96.0.3, ports: [{{port: 80}}]}}
"
    );
    let r = render(&text);
    assert_eq!(service_keys(&r), ["ns/good"]);
    let e = r.errors[0].to_string();
    assert!(
        e.starts_with(r"Service ns/evil\n-A INPUT -j ACCEPT: metadata.name: Invalid value:"),
        "{e}"
    );
    assert!(!e.contains('\n'), "no raw newline reaches a log line: {e}");
}

#[test]
fn documents_that_are_not_objects_are_reported_and_the_rest_is_used() {
    let text = format!("- a\n- b\n---\n42\n---\n{SVC}");
    let r = render(&text);
    assert_eq!(service_keys(&r), ["ns/good"]);
    assert_eq!(r.errors.len(), 2, "{:?}", r.errors);
    assert!(r.errors.iter().all(|e| e.error.kind == "Document"));
}

#[test]
fn a_syntax_error_says_the_rest_was_not_read() {
    let text = format!("{SVC}---\nkind: [unclosed\n---\n{SVC}");
    let r = render(&text);
    assert_eq!(service_keys(&r), ["ns/good"]);
    let e = r.errors.last().expect("an error").to_string();
    assert!(e.contains("the rest of the file was not read"), "{e}");
}

#[test]
fn empty_documents_and_empty_lists_are_fine() {
    let r = render(&format!(
        "---\n---\n{SVC}---\napiVersion: v1\nkind: List\nitems: []\n---\nkind: List\nitems:\n"
    ));
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(service_keys(&r), ["ns/good"]);
}

#[test]
fn json_input_is_read_too() {
    let text = r#"{"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "ns", "name": "good"},
         "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}}]}"#;
    assert_eq!(service_keys(&render(text)), ["ns/good"]);
}

#[test]
fn a_billion_laughs_file_is_refused() {
    let mut text = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let refs: Vec<String> = (0..10).map(|_| format!("*a{}", i - 1)).collect();
        text.push_str(&format!("a{i}: &a{i} [{}]\n", refs.join(", ")));
    }
    let err = RenderInput::parse(&text, "n").err().expect("refused");
    assert!(matches!(err, SnapshotError::Limit { doc: 1, .. }), "{err}");
    // The same inside a List item.
    let nested = format!(
        "kind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata:\n    annotations:\n{}",
        text.lines().map(|l| format!("      {l}\n")).collect::<String>()
    );
    assert!(matches!(
        RenderInput::parse(&nested, "n"),
        Err(SnapshotError::Limit { .. })
    ));
}

#[test]
fn a_few_aliases_are_fine() {
    let text = "apiVersion: v1
kind: Service
metadata: {namespace: ns, name: good, labels: &l {app: web}}
spec: {clusterIP: 10.96.0.1, selector: *l, ports: [{port: 80}]}
";
    let r = render(text);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(service_keys(&r), ["ns/good"]);
}

#[test]
fn absurd_nesting_is_refused() {
    let text = format!("a: {}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(RenderInput::parse(&text, "n").is_err());
}

#[test]
fn a_file_over_the_limit_is_refused_before_parsing() {
    let dir = std::env::temp_dir().join(format!("sliceproxy-snapshot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("big.yaml");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(MAX_SNAPSHOT_BYTES + 1).unwrap(); // sparse: costs no disk
    drop(f);
    let err = RenderInput::from_file(&path, "n").err().expect("refused");
    assert!(matches!(err, SnapshotError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("MAX_SNAPSHOT_BYTES"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn typed_snapshot_keeps_every_kind_and_the_errors() {
    let text = format!(
        "{SVC}---
apiVersion: v1
kind: Pod
metadata: {{namespace: ns, name: p}}
---
apiVersion: v1
kind: Node
metadata: {{name: node-a, labels: {{topology.kubernetes.io/zone: z}}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{namespace: ns, name: s, labels: {{kubernetes.io/service-name: good}}}}
addressType: IPv4
endpoints: oops
"
    );
    let s = Snapshot::parse(&text).unwrap();
    assert_eq!(
        (s.services.len(), s.pods.len(), s.nodes.len(), s.slices.len()),
        (1, 1, 1, 0)
    );
    assert_eq!(s.errors.len(), 1);
    assert!(
        s.errors[0]
            .to_string()
            .starts_with("EndpointSlice ns/s: endpoints: invalid type"),
        "{}",
        s.errors[0]
    );
    let r = render(&text);
    assert!(r.node_found && r.node.as_ref().is_some_and(|n| n.zone.as_deref() == Some("z")));
}
