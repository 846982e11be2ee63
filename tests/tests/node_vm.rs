//! The single-node proof: images/single-node.toml booted with `kiln run` (UEFI, software
//! emulation), then the real `kubectl` on the host through the 127.0.0.1 forward: the node is
//! Ready under the fw_cfg hostname, CoreDNS serves, a Deployment of the baked busybox image
//! answers behind a Service by DNS name from a third pod (both replicas) and through a
//! NodePort from the host, the scheduler leaves an oversized pod Pending, a Secret is
//! encrypted in etcd, the node heals after kill -9 of kube-apiserver, and Ctrl-C shuts the
//! guest down through ACPI. On failure the console tail and `kubectl get` output are printed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kiln_tests::{images, kiln_bin, text, workspace_root};

const HOSTNAME: &str = "kiln-proof";
const BUSYBOX: &str = "kiln.local/busybox:1.35.0";
const NODE_PORT: u16 = 30080;

fn kubectl_bin() -> PathBuf {
    let def = kiln::definition::load(&workspace_root().join("images/single-node.toml")).unwrap();
    let cache = kiln_tests::kiln_cache();
    let k8s = def.go.iter().find(|g| g.name == "kubernetes").unwrap();
    let out = kiln::gobuild::build(k8s, def.epoch, &cache, false).unwrap();
    out.binaries
        .iter()
        .find(|b| b.name == "kubectl")
        .unwrap()
        .path
        .clone()
}

struct Node {
    run: Child,
    state: tempfile::TempDir,
    kubectl: PathBuf,
    started: Instant,
}

impl Node {
    fn console(&self) -> String {
        let b = std::fs::read(self.state.path().join("console.log")).unwrap_or_default();
        String::from_utf8_lossy(&b).into_owned()
    }

    fn kubeconfig(&self) -> PathBuf {
        self.state.path().join("admin.kubeconfig")
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--request-timeout=60s")
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs kubectl, panicking with the node's state on failure.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.kubectl(args);
        if !o.status.success() {
            self.fail(&format!("kubectl {args:?}: {}", text(&o)));
        }
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn apply(&self, manifest: &str) {
        let path = self.state.path().join("m.yaml");
        std::fs::write(&path, manifest).unwrap();
        self.ok(&["apply", "-f", path.to_str().unwrap()]);
    }

    fn wait_console(&self, needle: &str, timeout: Duration) {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if self.console().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        self.fail(&format!("no {needle:?} on the console within {timeout:?}"));
    }

    /// Retries `f` until it returns Some, or fails the test after `timeout`.
    fn eventually<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let t = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            if t.elapsed() >= timeout {
                self.fail(&format!("{what}: not within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_secs(3));
        }
    }

    fn fail(&self, why: &str) -> ! {
        let console = self.console();
        let tail: Vec<&str> = console.lines().rev().take(60).collect();
        let pods = self.kubectl(&["get", "pods", "-A", "-o", "wide"]);
        let events = self.kubectl(&["get", "events", "-A"]);
        panic!(
            "{why}\n--- console tail\n{}\n--- pods\n{}\n--- events\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            text(&pods),
            text(&events)
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.run.kill();
        let _ = self.run.wait();
        // kiln run's QEMU child dies with it only on a clean stop; make sure.
        let _ = Command::new("pkill")
            .arg("-f")
            .arg(
                self.state
                    .path()
                    .join("console.log")
                    .to_string_lossy()
                    .as_ref(),
            )
            .status();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16) -> Option<String> {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.starts_with("HTTP/1.").then_some(body)
}

#[test]
fn single_node_cluster_in_qemu() {
    let built = images::build("images/single-node.toml");
    let state = tempfile::tempdir().unwrap();
    let api_port = free_port();
    let run = Command::new(kiln_bin())
        .arg("run")
        .arg(built.qcow2())
        .args(["--hostname", HOSTNAME, "--state-dir"])
        .arg(state.path())
        .args(["--api-port", &api_port.to_string()])
        .args(["--node-port", &NODE_PORT.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(state.path().join("run.err")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let node = Node {
        run,
        state,
        kubectl: kubectl_bin(),
        started: Instant::now(),
    };

    // Boot to node Ready.
    node.wait_console(
        &format!("kiln: node {HOSTNAME} Ready"),
        Duration::from_secs(1200),
    );
    eprintln!("node Ready after {:.0?}", node.started.elapsed());
    let run_err = std::fs::read_to_string(node.state.path().join("run.err")).unwrap();
    let node_port_host: u16 = run_err
        .lines()
        .find_map(|l| l.split("http://127.0.0.1:").nth(1))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| node.fail(&format!("no NodePort forward in {run_err}")));

    let ready = node.ok(&[
        "get",
        "node",
        HOSTNAME,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ]);
    assert_eq!(ready, "True");
    node.ok(&[
        "-n",
        "kube-system",
        "rollout",
        "status",
        "deployment/coredns",
        "--timeout=900s",
    ]);
    eprintln!("CoreDNS ready after {:.0?}", node.started.elapsed());

    // A Deployment of 2 busybox httpd replicas behind a Service and a NodePort.
    node.apply(&format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: httpd
        image: {BUSYBOX}
        imagePullPolicy: Never
        command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
        ports: [{{containerPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080, nodePort: {NODE_PORT}}}]
"#
    ));
    node.ok(&["rollout", "status", "deployment/web", "--timeout=900s"]);
    let pods = node.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    let pods: Vec<&str> = pods.split_whitespace().collect();
    assert_eq!(pods.len(), 2, "{pods:?}");

    // A third pod reaches the Service by its DNS name; both replicas answer.
    node.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sh", "-c", "for i in $(seq 40); do wget -q -O - http://web.default.svc.cluster.local/; done"]
"#
    ));
    node.eventually("the client pod completes", Duration::from_secs(600), || {
        let phase = node.ok(&["get", "pod", "client", "-o", "jsonpath={.status.phase}"]);
        match phase.as_str() {
            "Succeeded" => Some(()),
            "Failed" => node.fail("the client pod failed"),
            _ => None,
        }
    });
    let answers = node.ok(&["logs", "client"]);
    for p in &pods {
        assert!(answers.contains(p), "{p} never answered: {answers}");
    }

    // The NodePort answers from the host through the forward.
    let body = node.eventually("the NodePort answers", Duration::from_secs(300), || {
        http_get(node_port_host)
    });
    assert!(pods.iter().any(|p| body.contains(p)), "{body}");

    // The scheduler leaves a pod that needs more CPU than the node has Pending.
    node.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: huge}}
spec:
  containers:
  - name: c
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sleep", "3600"]
    resources: {{requests: {{cpu: "64"}}}}
"#
    ));
    node.eventually("Insufficient cpu", Duration::from_secs(300), || {
        let ev = node.ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=huge",
        ]);
        ev.contains("Insufficient cpu").then_some(())
    });
    assert_eq!(
        node.ok(&["get", "pod", "huge", "-o", "jsonpath={.status.phase}"]),
        "Pending"
    );

    // Self-heal: kill -9 of kube-apiserver from a privileged hostPID pod.
    node.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: killer}}
spec:
  hostPID: true
  restartPolicy: Never
  containers:
  - name: c
    image: {BUSYBOX}
    imagePullPolicy: Never
    securityContext: {{privileged: true}}
    command: ["sh", "-c", "sleep 5; kill -9 $(pidof kube-apiserver)"]
"#
    ));
    let killed = node.eventually("the apiserver goes away", Duration::from_secs(300), || {
        let o = node.kubectl(&["get", "--raw", "/readyz"]);
        (!o.status.success()).then(Instant::now)
    });
    node.eventually("the apiserver is back", Duration::from_secs(600), || {
        let o = node.kubectl(&["get", "--raw", "/readyz"]);
        o.status.success().then_some(())
    });
    eprintln!(
        "kube-apiserver healthy again {:.1?} after kill -9 was seen",
        killed.elapsed()
    );
    node.eventually("the node is Ready again", Duration::from_secs(600), || {
        let r = node.ok(&[
            "get",
            "node",
            HOSTNAME,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        (r == "True").then_some(())
    });

    // Ctrl-C: kiln run powers the guest off through ACPI and exits.
    let mut node = node;
    let pid = node.run.id();
    let _ = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = node.run.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(300) {
            node.fail("kiln run did not stop within 300 s of SIGINT");
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(status.success(), "kiln run exited with {status}");
    let err = std::fs::read_to_string(node.state.path().join("run.err")).unwrap();
    assert!(err.contains("ACPI"), "{err}");
    assert!(
        !err.contains("killing it"),
        "the guest ignored the power button: {err}"
    );
    let _: &Path = node.state.path();
}
