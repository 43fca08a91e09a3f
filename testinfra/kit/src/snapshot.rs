//! Inventory snapshots (the `kubectl get -o yaml` list format) for agent tests.

use super::netns::Pod;

/// A `List` with namespace `app` and two pods on the given namespace-pods' addresses: `client`
/// (`app: client`) and `server` (`app: server`, a named port `http` 8080), followed by `extra`
/// (more list items, as YAML lines starting with `- `).
pub fn client_and_server(client: &Pod, server: &Pod, extra: &str) -> String {
    format!(
        r"apiVersion: v1
kind: List
items:
- {{apiVersion: v1, kind: Namespace, metadata: {{name: app, labels: {{kubernetes.io/metadata.name: app}}}}}}
- apiVersion: v1
  kind: Pod
  metadata: {{name: client, namespace: app, labels: {{app: client}}}}
  spec: {{containers: [{{name: c, image: x}}]}}
  status: {{podIP: {client_ip}}}
- apiVersion: v1
  kind: Pod
  metadata: {{name: server, namespace: app, labels: {{app: server}}}}
  spec: {{containers: [{{name: s, image: x, ports: [{{name: http, containerPort: 8080}}]}}]}}
  status: {{podIP: {server_ip}}}
{extra}",
        client_ip = client.ipv4,
        server_ip = server.ipv4,
    )
}
