//! Objects applied once through the API after the apiserver is ready: the RBAC bindings from
//! [`crate::pki::rbac_bindings_json`] (admin group → cluster-admin, apiserver → kubelet API)
//! and CoreDNS (ServiceAccount, RBAC, ConfigMap, Deployment, Service at the cluster DNS IP).
//! No control-plane taint is ever set, so workloads schedule on the single node.

use serde_json::{json, Value};

use super::{ClusterParams, K8sError, COREDNS_IN_POD, PAUSE_IMAGE};

const NS: &str = "kube-system";

/// CoreDNS's Corefile for `domain`; names outside the cluster are forwarded to the
/// resolvers in the pod's /etc/resolv.conf only when the node has upstream DNS (an
/// air-gapped node has none, and CoreDNS refuses to start with an empty forward list).
pub fn corefile(domain: &str, forward: bool) -> String {
    let forward = if forward {
        "    forward . /etc/resolv.conf {\n       max_concurrent 1000\n    }\n"
    } else {
        ""
    };
    format!(
        ".:53 {{
    errors
    health {{
       lameduck 5s
    }}
    ready
    kubernetes {domain} in-addr.arpa ip6.arpa {{
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }}
    prometheus :9153
{forward}    cache 30 {{
       disable success {domain}
       disable denial {domain}
    }}
    loop
    reload
    loadbalance
}}
"
    )
}

/// CoreDNS objects, in apply order. The pod runs the immutable root's own `coredns` (the
/// pinned Go build the image carries, mounted read-only from the host) in the sandbox
/// image, which is imported first: no CoreDNS image to import at first boot. Unpacking
/// CoreDNS's 76 MB layer took 60-70 s of an emulated node's boot, and CoreDNS waited for it.
pub fn coredns(p: &ClusterParams) -> Result<Vec<Value>, K8sError> {
    let labels = json!({"k8s-app": "kube-dns"});
    let dns_ip = p.dns_ip()?.to_string();
    let coredns_binary = p.paths.binary("coredns").display().to_string();
    Ok(vec![
        json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "coredns", "namespace": NS},
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": [
                {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
                 "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                 "verbs": ["list", "watch"]},
            ],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "system:coredns"},
            "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": NS}],
        }),
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "coredns", "namespace": NS},
            "data": {"Corefile": corefile(p.cluster_domain.as_str(), p.upstream_dns)},
        }),
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "coredns", "namespace": NS, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "strategy": {"type": "RollingUpdate",
                             "rollingUpdate": {"maxUnavailable": 1}},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": "coredns",
                        "priorityClassName": "system-cluster-critical",
                        "dnsPolicy": "Default",
                        "tolerations": [
                            {"key": "CriticalAddonsOnly", "operator": "Exists"},
                            {"key": "node-role.kubernetes.io/control-plane",
                             "effect": "NoSchedule"},
                        ],
                        "containers": [{
                            "name": "coredns",
                            "image": PAUSE_IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "command": [COREDNS_IN_POD],
                            "args": ["-conf", "/etc/coredns/Corefile"],
                            "resources": {
                                "limits": {"memory": "170Mi"},
                                "requests": {"cpu": "100m", "memory": "70Mi"},
                            },
                            "volumeMounts": [
                                {"name": "config-volume", "mountPath": "/etc/coredns",
                                 "readOnly": true},
                                {"name": "coredns-binary", "mountPath": COREDNS_IN_POD,
                                 "readOnly": true},
                            ],
                            "ports": [
                                {"containerPort": 53, "name": "dns", "protocol": "UDP"},
                                {"containerPort": 53, "name": "dns-tcp", "protocol": "TCP"},
                                {"containerPort": 9153, "name": "metrics", "protocol": "TCP"},
                            ],
                            "securityContext": {
                                "allowPrivilegeEscalation": false,
                                "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
                                "readOnlyRootFilesystem": true,
                            },
                            "livenessProbe": {
                                "httpGet": {"path": "/health", "port": 8080, "scheme": "HTTP"},
                                "initialDelaySeconds": 60,
                                "timeoutSeconds": 5,
                                "successThreshold": 1,
                                "failureThreshold": 5,
                            },
                            // Every 2 s (the default is 10 s): CoreDNS ready is a boot
                            // milestone, and its first good answer ends the boot's wait.
                            "readinessProbe": {
                                "httpGet": {"path": "/ready", "port": 8181, "scheme": "HTTP"},
                                "periodSeconds": 2,
                            },
                        }],
                        "volumes": [
                            {"name": "config-volume", "configMap": {
                                "name": "coredns",
                                "items": [{"key": "Corefile", "path": "Corefile"}],
                            }},
                            {"name": "coredns-binary", "hostPath": {
                                "path": coredns_binary,
                                "type": "File",
                            }},
                        ],
                    },
                },
            },
        }),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": NS, "labels": {
                "k8s-app": "kube-dns",
                "kubernetes.io/name": "CoreDNS",
            }},
            "spec": {
                "selector": labels,
                "clusterIP": dns_ip,
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                    {"name": "metrics", "port": 9153, "protocol": "TCP"},
                ],
            },
        }),
    ])
}

/// Every addon object, in apply order: RBAC bindings first, then CoreDNS.
pub fn all(p: &ClusterParams) -> Result<Vec<Value>, K8sError> {
    let mut out: Vec<Value> = match crate::pki::rbac_bindings_json()["items"].as_array() {
        Some(items) => items.clone(),
        None => Vec::new(),
    };
    out.extend(coredns(p)?);
    Ok(out)
}

/// A name or namespace usable as one segment of an API path.
fn path_segment(v: &Value) -> Option<&str> {
    v.as_str()
        .filter(|n| !n.is_empty() && !n.contains(['/', '?', '#', '%']))
}

/// The API path a server-side apply of `object` PATCHes: `/api/v1/...` for the core group,
/// `/apis/GROUP/VERSION/...` for the others, under `namespaces/NS/` for a namespaced kind.
/// Only the kinds the addons use are known (an unknown one is an error that names it).
pub fn apply_path(object: &Value) -> Result<String, String> {
    let api_version = object["apiVersion"]
        .as_str()
        .ok_or("an object without apiVersion")?;
    let kind = object["kind"].as_str().ok_or("an object without kind")?;
    let name = path_segment(&object["metadata"]["name"])
        .ok_or_else(|| format!("a {kind} without a usable name"))?;
    let (plural, namespaced) = match kind {
        "ServiceAccount" => ("serviceaccounts", true),
        "ConfigMap" => ("configmaps", true),
        "Service" => ("services", true),
        "Deployment" => ("deployments", true),
        "Role" => ("roles", true),
        "RoleBinding" => ("rolebindings", true),
        "ClusterRole" => ("clusterroles", false),
        "ClusterRoleBinding" => ("clusterrolebindings", false),
        other => return Err(format!("no API path known for kind {other} ({name})")),
    };
    let mut path = if api_version.contains('/') {
        format!("/apis/{api_version}/")
    } else {
        format!("/api/{api_version}/")
    };
    if namespaced {
        let ns = path_segment(&object["metadata"]["namespace"])
            .ok_or_else(|| format!("{kind} {name} has no namespace"))?;
        path.push_str(&format!("namespaces/{ns}/"));
    }
    Ok(format!("{path}{plural}/{name}"))
}

/// The addons as one `v1/List` document (JSON), e.g. for `kubectl apply --server-side -f`.
pub fn list_json(p: &ClusterParams) -> Result<String, K8sError> {
    let v = json!({"apiVersion": "v1", "kind": "List", "items": all(p)?});
    Ok(format!("{v:#}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Kubernetes;
    use crate::k8s::Paths;

    #[test]
    fn coredns_service_sits_at_the_dns_ip_and_the_image_is_pinned() {
        let k = Kubernetes {
            service_cidr: "10.100.0.0/16".parse().unwrap(),
            cluster_domain: "kiln.test".parse().unwrap(),
            ..Default::default()
        };
        let p = ClusterParams::new(
            &k,
            "node1".parse().unwrap(),
            vec![],
            "127.0.0.1".parse().unwrap(),
            Paths::node(),
        );
        let text = list_json(&p).unwrap();
        let list: Value = serde_json::from_str(&text).unwrap();
        let items = list["items"].as_array().unwrap();
        let find = |kind: &str, name: &str| {
            items
                .iter()
                .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("no {kind} {name}"))
        };
        assert_eq!(
            find("Service", "kube-dns")["spec"]["clusterIP"],
            "10.100.0.10"
        );
        let c = &find("Deployment", "coredns")["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], "registry.k8s.io/pause:3.10.1");
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        // The root's coredns, mounted read-only where the command runs it.
        let pod = &find("Deployment", "coredns")["spec"]["template"]["spec"];
        assert_eq!(c["command"][0], "/kiln/coredns");
        let mount = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == "/kiln/coredns")
            .unwrap();
        assert_eq!(mount["readOnly"], true);
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        assert_eq!(volume["hostPath"]["path"], "/usr/bin/coredns");
        assert_eq!(volume["hostPath"]["type"], "File");
        let corefile = find("ConfigMap", "coredns")["data"]["Corefile"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(corefile.contains("kubernetes kiln.test in-addr.arpa ip6.arpa {"));
        // Braces balance (the format! escapes are easy to get wrong).
        assert_eq!(corefile.matches('{').count(), corefile.matches('}').count());
        let admins = find("ClusterRoleBinding", "kiln:cluster-admins");
        assert_eq!(admins["subjects"][0]["name"], crate::pki::ADMIN_GROUP);
        assert_eq!(admins["roleRef"]["name"], "cluster-admin");
        find("ClusterRoleBinding", "kiln:apiserver-kubelet-client");
        find("ClusterRole", "system:coredns");
        find("ServiceAccount", "coredns");
        // Every object is namespaced in kube-system or cluster-scoped, and has a kind and
        // an API path to apply it at.
        for o in items {
            assert!(o["apiVersion"].is_string() && o["kind"].is_string(), "{o}");
            assert!(apply_path(o).is_ok(), "{o}");
        }
    }

    #[test]
    fn apply_paths_follow_the_group_scope_and_namespace() {
        let path = |v: Value| apply_path(&v);
        assert_eq!(
            path(json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "coredns", "namespace": "kube-system"}})),
            Ok("/api/v1/namespaces/kube-system/configmaps/coredns".into())
        );
        assert_eq!(
            path(json!({"apiVersion": "apps/v1", "kind": "Deployment",
                        "metadata": {"name": "coredns", "namespace": "kube-system"}})),
            Ok("/apis/apps/v1/namespaces/kube-system/deployments/coredns".into())
        );
        assert_eq!(
            path(json!({"apiVersion": "rbac.authorization.k8s.io/v1",
                        "kind": "ClusterRoleBinding", "metadata": {"name": "kiln:x"}})),
            Ok("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/kiln:x".into())
        );
        let err = |v: Value| path(v).unwrap_err();
        assert!(
            err(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}))
                .contains("kind Pod (p)")
        );
        assert!(
            err(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}))
                .contains("Service s has no namespace")
        );
        assert!(err(json!({"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": {"name": "../x", "namespace": "a"}}))
        .contains("usable name"));
        assert!(err(json!({"kind": "ConfigMap"})).contains("apiVersion"));
    }
}
