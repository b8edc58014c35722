// NodeRestriction's table of (request, expected HTTP code per identity), shared by the
// registry's unit test (`registry::tests::node_restriction_table`, in-process) and
// `tests/tests/node_restriction.rs` (over HTTP against the real server) through `include!`, so
// both check exactly the same rows. The including file brings `json!` and `Value` into scope.

/// Who sends a request.
#[derive(Debug, Clone, Copy)]
enum Who {
    Admin,
    N1,
    N2,
    Nobody,
    NoToken,
}

const WHO: [Who; 5] = [Who::Admin, Who::N1, Who::N2, Who::Nobody, Who::NoToken];

/// Patch content types.
#[derive(Debug, Clone, Copy)]
enum Pt {
    Json,
    Merge,
    Strategic,
}

/// One request of the table.
#[derive(Debug, Clone)]
enum Req {
    /// POST a Node with these labels (the fixture's Node of that name is deleted first).
    CreateNode(&'static str, Value),
    /// PUT the stored Node with its labels edited: `Some(v)` sets a key, `None` removes it.
    UpdateLabels(&'static str, Vec<(&'static str, Option<&'static str>)>),
    /// PATCH a Node.
    PatchNode(&'static str, Pt, Value),
    /// PUT a Node's status (the body also carries a label, which a status write ignores).
    UpdateNodeStatus(&'static str),
    /// DELETE a Node.
    DeleteNode(&'static str),
    /// DELETE a pod.
    DeletePod(&'static str),
    /// PUT a pod's status.
    UpdatePodStatus(&'static str),
    /// PATCH a pod's status.
    PatchPodStatus(&'static str),
}

/// The table: request → expected code for admin, n1, n2, an authenticated nobody, no token.
fn table() -> Vec<(Req, [u16; 5])> {
    use Pt::{Json, Merge, Strategic};
    use Req::*;
    let allowed = json!({
        "kubernetes.io/hostname": "n1", "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/arch": "amd64", "node.kubernetes.io/instance-type": "m5",
        "topology.kubernetes.io/zone": "z1", "failure-domain.beta.kubernetes.io/region": "r1",
        "kubelet.kubernetes.io/x": "1", "sub.node.kubernetes.io/y": "2", "example.com/team": "a",
        "plain": "b"});
    vec![
        (CreateNode("n1", allowed), [201, 201, 403, 403, 401]),
        (
            CreateNode("n1", json!({"node-role.kubernetes.io/worker": ""})),
            [201, 403, 403, 403, 401],
        ),
        (
            CreateNode("n1", json!({"node-restriction.kubernetes.io/pool": "a"})),
            [201, 403, 403, 403, 401],
        ),
        (
            CreateNode("n1", json!({"a.node-restriction.kubernetes.io/pool": "a"})),
            [201, 403, 403, 403, 401],
        ),
        (
            CreateNode("n1", json!({"kubernetes.io/role": "x"})),
            [201, 403, 403, 403, 401],
        ),
        (
            CreateNode("n1", json!({"foo.k8s.io/x": "1"})),
            [201, 403, 403, 403, 401],
        ),
        (CreateNode("n3", json!({})), [201, 403, 403, 403, 401]),
        (
            UpdateLabels("n1", vec![("example.com/team", Some("a"))]),
            [200, 200, 403, 403, 401],
        ),
        (
            UpdateLabels(
                "n1",
                vec![
                    ("topology.kubernetes.io/zone", Some("z2")),
                    ("kubernetes.io/hostname", Some("h")),
                ],
            ),
            [200, 200, 403, 403, 401],
        ),
        (
            UpdateLabels("n1", vec![("node-role.kubernetes.io/worker", Some(""))]),
            [200, 403, 403, 403, 401],
        ),
        (
            UpdateLabels("n1", vec![("node-role.kubernetes.io/control-plane", None)]),
            [200, 403, 403, 403, 401],
        ),
        (
            UpdateLabels(
                "n1",
                vec![("node-role.kubernetes.io/control-plane", Some("x"))],
            ),
            [200, 403, 403, 403, 401],
        ),
        (
            UpdateLabels(
                "n1",
                vec![("node-restriction.kubernetes.io/pool", Some("a"))],
            ),
            [200, 403, 403, 403, 401],
        ),
        (
            UpdateLabels("n2", vec![("example.com/team", Some("a"))]),
            [200, 403, 200, 403, 401],
        ),
        (
            PatchNode(
                "n1",
                Merge,
                json!({"metadata": {"labels": {"node-role.kubernetes.io/worker": ""}}}),
            ),
            [200, 403, 403, 403, 401],
        ),
        (
            PatchNode(
                "n1",
                Merge,
                json!({"metadata": {"labels": {"example.com/team": "b"}}}),
            ),
            [200, 200, 403, 403, 401],
        ),
        (
            PatchNode(
                "n1",
                Strategic,
                json!({"metadata": {"labels": {"topology.kubernetes.io/region": "r"}}}),
            ),
            [200, 200, 403, 403, 401],
        ),
        (
            PatchNode(
                "n1",
                Strategic,
                json!({"metadata": {"labels": {"k8s.io/x": "y"}}}),
            ),
            [200, 403, 403, 403, 401],
        ),
        (
            PatchNode(
                "n1",
                Json,
                json!([{"op": "remove", "path": "/metadata/labels/node-role.kubernetes.io~1control-plane"}]),
            ),
            [200, 403, 403, 403, 401],
        ),
        (
            PatchNode(
                "n1",
                Merge,
                json!({"spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}}),
            ),
            [200, 403, 403, 403, 401],
        ),
        (
            PatchNode(
                "n2",
                Merge,
                json!({"metadata": {"labels": {"node-role.kubernetes.io/worker": ""}}}),
            ),
            [200, 403, 403, 403, 401],
        ),
        (UpdateNodeStatus("n1"), [200, 200, 403, 403, 401]),
        (DeleteNode("n1"), [200, 403, 403, 403, 401]),
        (DeletePod("p-n1"), [200, 200, 403, 403, 401]),
        (DeletePod("p-n2"), [200, 403, 200, 403, 401]),
        (DeletePod("p-unbound"), [200, 403, 403, 403, 401]),
        (UpdatePodStatus("p-n1"), [200, 200, 403, 403, 401]),
        (PatchPodStatus("p-n2"), [200, 403, 200, 403, 401]),
    ]
}
