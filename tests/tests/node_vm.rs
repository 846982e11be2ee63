//! The single-node proof: images/single-node.toml booted with `kiln run` (UEFI, software
//! emulation), then the real `kubectl` on the host through the 127.0.0.1 forward: the node is
//! Ready under the fw_cfg hostname, CoreDNS serves, a Deployment of the baked busybox image
//! answers behind a Service by DNS name from a third pod (both replicas) and through a
//! NodePort from the host, the scheduler leaves an oversized pod Pending, each component
//! logs to the journal under its own name and systemd pets the hardware watchdog, a Secret
//! and a ConfigMap are mounted (the Secret encrypted in etcd), the kubelet restarts an
//! exiting container, a deleted pod is replaced, a rollout is undone, the node heals after
//! kill -9 of kube-apiserver, etcd, the kubelet and containerd, a reboot keeps name, PKI,
//! data and workloads, and Ctrl-C shuts the guest down through ACPI. Then the hybrid ISO
//! (SeaBIOS) and the PXE bundle boot to node Ready. On failure the console tail, `kubectl
//! get` output and `firstboot status` are printed.

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
        self.wait_console_count(needle, 1, timeout);
    }

    /// Waits until `needle` has appeared `n` times on the console (boots of one run).
    fn wait_console_count(&self, needle: &str, n: usize, timeout: Duration) {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if self.console().matches(needle).count() >= n {
                return;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        self.fail(&format!(
            "no {needle:?} (#{n}) on the console within {timeout:?}"
        ));
    }

    /// Runs a shell script on the node itself, in PID 1's namespaces, through the
    /// privileged hostPID/hostNetwork pod `host`.
    fn host_sh(&self, script: &str) -> Output {
        self.kubectl(&[
            "exec", "host", "--", "nsenter", "-t", "1", "-m", "-u", "-i", "-n", "--", "/bin/sh",
            "-c", script,
        ])
    }

    /// Like `host_sh`, panicking with the node's state on failure.
    fn host_ok(&self, script: &str) -> String {
        let o = self.host_sh(script);
        if !o.status.success() {
            self.fail(&format!("on the node: {script}: {}", text(&o)));
        }
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Node Ready, by the API.
    fn node_ready(&self) -> bool {
        let o = self.kubectl(&[
            "get",
            "node",
            HOSTNAME,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        o.status.success() && String::from_utf8_lossy(&o.stdout) == "True"
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
        // Best effort: only once the `host` pod runs.
        let status = self.kubectl(&[
            "exec",
            "host",
            "--",
            "nsenter",
            "-t",
            "1",
            "-m",
            "--",
            "/usr/bin/firstboot",
            "status",
        ]);
        panic!(
            "{why}\n--- console tail\n{}\n--- pods\n{}\n--- events\n{}\n--- firstboot status\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            text(&pods),
            text(&events),
            text(&status)
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

/// `kiln run IMAGE` with the test's hostname and forwards, output to files in its state dir.
fn boot(image: &Path, extra: &[&str]) -> Node {
    let state = tempfile::tempdir().unwrap();
    let api_port = free_port();
    let run = Command::new(kiln_bin())
        .arg("run")
        .arg(image)
        .args(["--hostname", HOSTNAME, "--state-dir"])
        .arg(state.path())
        .args(["--api-port", &api_port.to_string()])
        .args(["--node-port", &NODE_PORT.to_string()])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(state.path().join("run.err")).unwrap(),
        ))
        .spawn()
        .unwrap();
    Node {
        run,
        state,
        kubectl: kubectl_bin(),
        started: Instant::now(),
    }
}

/// SIGINT to `kiln run`: it powers the guest off through ACPI and exits cleanly.
fn power_off(mut node: Node) {
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
}

#[test]
fn single_node_cluster_in_qemu() {
    let built = images::build("images/single-node.toml");
    let node = boot(&built.qcow2(), &[]);

    // Boot to node Ready.
    node.wait_console(
        &format!("kiln: node {HOSTNAME} Ready"),
        Duration::from_secs(1200),
    );
    eprintln!("node Ready after {:.0?}", node.started.elapsed());
    // firstboot's own share and its timeline, drawn by kiln run.
    let share = node.console();
    let share = share
        .lines()
        .find(|l| l.starts_with("kiln: firstboot share "))
        .unwrap_or_else(|| node.fail("no firstboot share line"))
        .to_string();
    eprintln!("{share}");
    let svg_path = node.state.path().join("timeline.svg");
    let svg = node.eventually(
        "kiln run draws the timeline",
        Duration::from_secs(30),
        || std::fs::read_to_string(&svg_path).ok(),
    );
    for name in ["kube-apiserver", "kubelet", "node-ready", "ready after"] {
        assert!(svg.contains(name), "{name} is not in {svg}");
    }
    let run_err = std::fs::read_to_string(node.state.path().join("run.err")).unwrap();
    let node_port_host: u16 = run_err
        .lines()
        .find_map(|l| l.split("http://127.0.0.1:").nth(1))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| node.fail(&format!("no NodePort forward in {run_err}")));

    if !node.node_ready() {
        node.fail("the API does not say the node is Ready");
    }
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

    // A privileged hostPID/hostNetwork pod: the tests' way onto the node itself.
    node.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: host}}
spec:
  hostPID: true
  hostNetwork: true
  containers:
  - name: c
    image: {BUSYBOX}
    imagePullPolicy: Never
    securityContext: {{privileged: true}}
    command: ["sleep", "1000000"]
"#
    ));
    node.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/host",
        "--timeout=600s",
    ]);

    // Each component logs to the journal under its own name; systemd pets the watchdog.
    for comp in ["etcd", "kube-apiserver", "kubelet", "containerd"] {
        let lines = node.host_ok(&format!(
            "journalctl -t {comp} -o cat --no-pager | tail -n 3"
        ));
        assert!(!lines.trim().is_empty(), "no journal lines for {comp}");
    }
    let wd = node.host_ok(
        "cat /sys/class/watchdog/watchdog*/identity; systemctl show -p RuntimeWatchdogUSec",
    );
    assert!(
        wd.contains("i6300ESB") && wd.contains("RuntimeWatchdogUSec=30s"),
        "{wd}"
    );

    // A Secret and a ConfigMap mounted into a pod; the Secret is encrypted in etcd.
    node.ok(&[
        "create",
        "secret",
        "generic",
        "s1",
        "--from-literal=password=kiln-secret-7f3a",
    ]);
    node.ok(&[
        "create",
        "configmap",
        "c1",
        "--from-literal=greeting=hello-from-kiln",
    ]);
    node.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: mounts}}
spec:
  containers:
  - name: c
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sh", "-c", "cat /s/password; echo; cat /c/greeting; echo; exec sleep 1000000"]
    volumeMounts:
    - {{name: s, mountPath: /s}}
    - {{name: c, mountPath: /c}}
  volumes:
  - {{name: s, secret: {{secretName: s1}}}}
  - {{name: c, configMap: {{name: c1}}}}
"#
    ));
    node.eventually(
        "the mounts pod shows both",
        Duration::from_secs(600),
        || {
            let o = node.kubectl(&["logs", "mounts"]);
            let l = String::from_utf8_lossy(&o.stdout).into_owned();
            (l.contains("kiln-secret-7f3a") && l.contains("hello-from-kiln")).then_some(())
        },
    );
    let etcdctl = "ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 \
        --cacert=/var/lib/kiln/pki/etcd/ca.crt \
        --cert=/var/lib/kiln/pki/apiserver-etcd-client.crt \
        --key=/var/lib/kiln/pki/apiserver-etcd-client.key";
    let stored = node.host_ok(&format!(
        "{etcdctl} get /registry/secrets/default/s1 --print-value-only | head -c 64"
    ));
    assert!(stored.starts_with("k8s:enc:"), "{stored:?}");
    assert!(!stored.contains("kiln-secret-7f3a"));

    // The kubelet restarts a container that exits.
    node.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: crasher}}
spec:
  containers:
  - name: c
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sh", "-c", "sleep 3; exit 3"]
"#
    ));
    node.eventually("the crasher is restarted", Duration::from_secs(600), || {
        let n = node.ok(&[
            "get",
            "pod",
            "crasher",
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}",
        ]);
        (n.trim().parse::<u32>().unwrap_or(0) >= 1).then_some(())
    });
    node.ok(&["delete", "pod", "crasher", "--wait=false"]);

    // A deleted pod of the Deployment is replaced.
    node.ok(&["delete", "pod", pods[0], "--wait=false"]);
    node.eventually(
        "the deleted pod is replaced",
        Duration::from_secs(600),
        || {
            let now = node.ok(&[
                "get",
                "pods",
                "-l",
                "app=web",
                "--field-selector=status.phase=Running",
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ]);
            let now: Vec<&str> = now.split_whitespace().collect();
            (now.len() == 2 && !now.contains(&pods[0])).then_some(())
        },
    );

    // A rollout to a changed template, then `rollout undo` back.
    node.ok(&["set", "env", "deployment/web", "KILN_REV=2"]);
    node.ok(&["rollout", "status", "deployment/web", "--timeout=900s"]);
    let env = "jsonpath={.spec.template.spec.containers[0].env}";
    assert!(node
        .ok(&["get", "deployment", "web", "-o", env])
        .contains("KILN_REV"));
    node.ok(&["rollout", "undo", "deployment/web"]);
    node.ok(&["rollout", "status", "deployment/web", "--timeout=900s"]);
    assert!(!node
        .ok(&["get", "deployment", "web", "-o", env])
        .contains("KILN_REV"));
    assert_eq!(
        node.ok(&[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision}"
        ]),
        "3"
    );

    // Self-heal of the node itself: kill -9 of each component from the host pod; the
    // supervisor restarts it and the cluster is healthy again.
    for comp in ["kube-apiserver", "etcd", "kubelet", "containerd"] {
        let pid_of = || {
            let o = node.kubectl(&["exec", "host", "--", "pidof", comp]);
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        };
        let old = pid_of();
        assert!(!old.is_empty() && !old.contains(' '), "{comp}: pid {old:?}");
        // Killing the apiserver breaks this very exec stream: its result says nothing; the
        // pid changing below does.
        let _ = node.kubectl(&["exec", "host", "--", "kill", "-9", &old]);
        let killed = Instant::now();
        node.eventually(
            &format!("healthy again after kill -9 of {comp}"),
            Duration::from_secs(600),
            || {
                let now = pid_of();
                let healthy = !now.is_empty()
                    && now != old
                    && node.kubectl(&["get", "--raw", "/readyz"]).status.success()
                    && node.node_ready()
                    && node
                        .kubectl(&["exec", "host", "--", "true"])
                        .status
                        .success();
                healthy.then_some(())
            },
        );
        eprintln!(
            "healthy again {:.1?} after kill -9 of {comp}",
            killed.elapsed()
        );
    }

    // Reboot through systemd: the node comes back under the same name with the same PKI
    // (this kubeconfig still works), etcd's data (the Secret decrypts with the key of the
    // first boot) and its workloads.
    let ca_before =
        node.host_ok("sha256sum /var/lib/kiln/pki/ca.crt /var/lib/kiln/pki/apiserver.crt");
    let _ = node.host_sh("systemctl reboot");
    let rebooted = Instant::now();
    node.wait_console_count(
        &format!("kiln: node {HOSTNAME} Ready"),
        2,
        Duration::from_secs(1200),
    );
    eprintln!("node Ready {:.0?} after the reboot", rebooted.elapsed());
    assert!(node.node_ready());
    // The host pod's status may still be the one from before the reboot: ask it.
    let ca_after = node.eventually(
        "the host pod answers again",
        Duration::from_secs(600),
        || {
            let o =
                node.host_sh("sha256sum /var/lib/kiln/pki/ca.crt /var/lib/kiln/pki/apiserver.crt");
            o.status
                .success()
                .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
        },
    );
    assert_eq!(ca_after, ca_before);
    let secret = node.ok(&["get", "secret", "s1", "-o", "jsonpath={.data.password}"]);
    assert_eq!(secret.trim(), "a2lsbi1zZWNyZXQtN2YzYQ==");
    node.ok(&["rollout", "status", "deployment/web", "--timeout=900s"]);
    let status = node.host_ok("firstboot status --json");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["first-boot"], false, "{status}");
    assert_eq!(status["hostname"], HOSTNAME);

    // Ctrl-C: kiln run powers the guest off through ACPI and exits.
    power_off(node);

    // The same image from the hybrid ISO under SeaBIOS, and from the PXE bundle (its
    // kernel, initramfs and boot.ipxe command line; the network path through iPXE and TFTP
    // is proven for the same bundle format in boot_paths.rs), each to node Ready.
    for (what, image, extra) in [
        ("ISO (SeaBIOS)", built.iso(), &["--bios"][..]),
        ("PXE bundle", built.pxe(), &[][..]),
    ] {
        let node = boot(&image, extra);
        node.wait_console(
            &format!("kiln: node {HOSTNAME} Ready"),
            Duration::from_secs(1200),
        );
        eprintln!("{what}: node Ready after {:.0?}", node.started.elapsed());
        assert!(node.node_ready());
        power_off(node);
    }
}
