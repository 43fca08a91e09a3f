//! Starting the node: namespaces, configuration files, then each component in order, each
//! waited for before the next needs it.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::bins::Binaries;
use crate::images;
use crate::sys::{self, enter, Join, NsFile};
use crate::teardown::{self, State};

/// The node's address (on lo inside the node's netns).
pub const NODE_IP: &str = "10.250.0.10";
/// The node's pod network (the bridge `cni0` is its gateway) within the cluster's range.
pub const POD_SUBNET: &str = "10.244.0.0/24";
pub const POD_GATEWAY: &str = "10.244.0.1";
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The static token of the admin (`system:masters`).
pub const ADMIN_TOKEN: &str = "flowwatch-node-admin-token";
/// The kernel tunables kubelet writes at start (`protectKernelDefaults: false`): inside the node
/// they are plain files bound over /proc/sys, so the machine keeps its values.
pub const KUBELET_SYSCTLS: &[&str] = &[
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
];

#[derive(Clone, Debug, Default)]
pub struct NodeOptions {
    /// Node name (also of its netns and cgroup); default `fwnode-<pid>`.
    pub name: Option<String>,
    /// The node outlives this process (`cargo xtask cluster up`): no parent-death signal, no
    /// teardown on drop.
    pub detached: bool,
    /// Extra docker-archive images to import before kubelet starts.
    pub images: Vec<PathBuf>,
    /// How many pod addresses host-local hands out (from `.2` of the pod subnet); `None`: the
    /// whole subnet. A test that runs exactly this many pods gets a deleted pod's address
    /// reused by the next pod: the only one free.
    pub pod_addresses: Option<u8>,
}

pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub bins: Binaries,
    // Kept open while the node runs: `join` refers to their descriptors. Closed before the
    // teardown (an open namespace file keeps the namespace, and all in it, alive).
    netns: Option<NsFile>,
    mnt: Option<NsFile>,
    join: Join,
    detached: bool,
    done: bool,
    /// Seconds each start phase took (for the report).
    pub timings: Vec<(String, Duration)>,
}

/// Where the nodes keep their state: `<tmp>/flowwatch-node/<name>`.
pub fn state_base() -> PathBuf {
    std::env::temp_dir().join("flowwatch-node")
}

impl Node {
    /// Starts a node and waits until it is Ready (with kube-proxy running and the `default`
    /// ServiceAccount created). On any failure everything started so far is torn down and the
    /// error carries the components' log tails.
    pub fn up(opts: &NodeOptions) -> Result<Node> {
        let bins = Binaries::find()?;
        // Leftovers of a run that died without its teardown (its owner process is gone).
        teardown::reap_stale(&state_base());
        let name = opts
            .name
            .clone()
            .unwrap_or_else(|| format!("fwnode-{}", std::process::id()));
        let dir = state_base().join(&name);
        if dir.exists() {
            bail!(
                "{} exists: a node named {name} is up (`cargo xtask cluster down`)",
                dir.display()
            );
        }
        std::fs::create_dir_all(&dir)?;
        if opts.detached {
            // Not a test's leftover when this process is gone: `reap_stale` leaves it alone.
            std::fs::write(
                dir.join("detached"),
                "started by `cargo xtask cluster up`\n",
            )?;
        }
        let mut state = State::create(&dir, &name)?;
        match Self::start(&name, &dir, bins, opts, &mut state) {
            Ok(node) => Ok(node),
            Err(e) => {
                let logs = logs_tail(&dir);
                let cleanup = teardown::teardown(&dir);
                Err(e.context(format!(
                    "starting node {name}\n{logs}{}",
                    cleanup
                        .err()
                        .map(|c| format!("\nteardown: {c:#}"))
                        .unwrap_or_default()
                )))
            }
        }
    }

    fn start(
        name: &str,
        dir: &Path,
        bins: Binaries,
        opts: &NodeOptions,
        state: &mut State,
    ) -> Result<Node> {
        let started = Instant::now();
        let mut timings = Vec::new();
        let mut phase = |what: &str, since: &mut Instant| {
            timings.push((what.to_string(), since.elapsed()));
            *since = Instant::now();
        };
        let mut t = Instant::now();
        for sub in [
            "logs",
            "certs",
            "etc",
            "cni/net.d",
            "cni/ipam",
            "sysctl",
            "kubelet",
        ] {
            std::fs::create_dir_all(dir.join(sub))?;
        }

        // --- network namespace: only the node's own networks, no default route.
        sys::run(Command::new("ip").args(["netns", "add", name]))?;
        let netns_path = PathBuf::from(format!("/run/netns/{name}"));
        state.record("netns", &netns_path.display().to_string())?;
        state.record(
            "netns_inode",
            &sys::ns_inode(&netns_path)
                .context("netns inode")?
                .to_string(),
        )?;
        let netns = NsFile::open(&netns_path)?;
        let in_ns = |args: &str| -> Result<()> {
            let mut c = Command::new("ip");
            c.args(["-n", name]).args(args.split_whitespace());
            sys::run(&mut c).map(|_| ())
        };
        in_ns("link set lo up")?;
        // The node's address lives on lo (this kernel has no dummy links).
        in_ns(&format!("addr add {NODE_IP}/32 dev lo"))?;
        in_ns("link add cni0 type bridge")?;
        in_ns(&format!("addr add {POD_GATEWAY}/24 dev cni0"))?;
        in_ns("link set cni0 up")?;
        // The Service range goes to the node itself (kube-proxy's DNAT happens after the route
        // lookup, so a blackhole would break host-network clients; what no rule translates
        // dies on lo); there is no default route at all.
        in_ns(&format!("route add {SERVICE_CIDR} dev lo src {NODE_IP}"))?;
        let routes = sys::run(Command::new("ip").args(["-n", name, "route", "show", "default"]))?;
        if !routes.trim().is_empty() {
            bail!("the node's netns has a default route: {routes}");
        }
        let join_net = Join {
            net: Some(netns.fd()),
            mnt: None,
            die_with_parent: !opts.detached,
        };
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.bridge.bridge-nf-call-iptables", "1"),
        ] {
            let mut c = Command::new("sysctl");
            c.args(["-qw", &format!("{key}={value}")]);
            enter(&mut c, join_net);
            sys::run(&mut c)?;
        }

        // --- a private mount namespace shared by the node's processes, held by a sleeper.
        for sysctl in KUBELET_SYSCTLS {
            let value = std::fs::read_to_string(Path::new("/proc/sys").join(sysctl))
                .with_context(|| format!("reading /proc/sys/{sysctl}"))?;
            std::fs::write(dir.join("sysctl").join(sysctl.replace('/', ".")), value)?;
        }
        let mut holder = Command::new("unshare");
        holder.args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sleep",
            "infinity",
        ]);
        enter(&mut holder, join_net);
        let holder_pid = spawn_logged(&mut holder, &dir.join("logs/holder.log"))?;
        state.pid(holder_pid, "mount-namespace-holder")?;
        let holder_mnt = PathBuf::from(format!("/proc/{holder_pid}/ns/mnt"));
        let own_mnt = sys::ns_inode(Path::new("/proc/self/ns/mnt"));
        if !sys::wait_until(Duration::from_secs(5), || {
            let m = sys::ns_inode(&holder_mnt);
            m.is_some() && m != own_mnt
        }) {
            bail!("the mount namespace holder did not start");
        }
        state.record(
            "mnt_inode",
            &sys::ns_inode(&holder_mnt).context("mnt inode")?.to_string(),
        )?;
        let mnt = NsFile::open(&holder_mnt)?;
        let in_mnt = |args: &[&str]| -> Result<()> {
            sys::run(
                Command::new("nsenter")
                    .arg(format!("--mount={}", holder_mnt.display()))
                    .arg("--")
                    .args(args),
            )
            .map(|_| ())
        };
        for path in ["/run", "/var/lib", "/var/log"] {
            in_mnt(&["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", path])?;
        }
        // The agent's hostPath. The machine may have tracefs mounted already (then the node
        // sees it through its copy of the mount table).
        if !Path::new("/sys/kernel/tracing/events").exists() {
            in_mnt(&["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"])?;
        }
        for sysctl in KUBELET_SYSCTLS {
            let file = dir.join("sysctl").join(sysctl.replace('/', "."));
            in_mnt(&[
                "mount",
                "--bind",
                &file.display().to_string(),
                &format!("/proc/sys/{sysctl}"),
            ])?;
        }
        let join = Join {
            net: Some(netns.fd()),
            mnt: Some(mnt.fd()),
            die_with_parent: !opts.detached,
        };

        // --- cgroups: the pods live under /<name> of every hierarchy (kubelet's cgroupRoot).
        let cgroup = format!("flowwatch-node-{name}");
        state.record("cgroup", &cgroup)?;
        for root in sys::cgroup_mounts() {
            let d = root.join(&cgroup);
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            // A new cpuset has no CPUs or memory nodes until given its parent's.
            for f in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(v) = std::fs::read_to_string(root.join(f)) {
                    std::fs::write(d.join(f), v.trim())
                        .with_context(|| format!("{}/{f}", d.display()))?;
                }
            }
        }
        phase("namespaces and cgroups", &mut t);

        // --- certificates, keys, tokens, kubeconfig.
        let certs = dir.join("certs");
        sys::run(
            Command::new("openssl")
                .args(["genrsa", "-out"])
                .arg(certs.join("sa.key"))
                .arg("2048"),
        )?;
        sys::run(
            Command::new("openssl")
                .args(["rsa", "-pubout", "-in"])
                .arg(certs.join("sa.key"))
                .arg("-out")
                .arg(certs.join("sa.pub")),
        )?;
        std::fs::write(
            dir.join("etc/tokens.csv"),
            format!("{ADMIN_TOKEN},admin,admin-uid,\"system:masters\"\n"),
        )?;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(&certs.join("apiserver.crt")))?;

        // --- etcd and kube-apiserver.
        let mut etcd = Command::new(&bins.etcd);
        etcd.arg("--name=node")
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .args([
                "--listen-client-urls=http://127.0.0.1:2379",
                "--advertise-client-urls=http://127.0.0.1:2379",
                "--listen-peer-urls=http://127.0.0.1:2380",
                "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                "--initial-cluster=node=http://127.0.0.1:2380",
                "--listen-metrics-urls=http://127.0.0.1:2381",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ]);
        let mut node = Node {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            bins,
            netns: Some(netns),
            mnt: Some(mnt),
            join,
            detached: opts.detached,
            // Until it is up, `up` tears a failed start down (after this value, and the
            // namespace files in it, are dropped).
            done: true,
            timings: Vec::new(),
        };
        node.spawn("etcd", &mut etcd, state)?;
        let mut apiserver = Command::new(&node.bins.kube_apiserver);
        apiserver.args([
            "--etcd-servers=http://127.0.0.1:2379",
            "--bind-address=0.0.0.0",
            &format!("--advertise-address={NODE_IP}"),
            "--secure-port=6443",
            &format!("--cert-dir={}", certs.display()),
            &format!("--token-auth-file={}", dir.join("etc/tokens.csv").display()),
            "--authorization-mode=RBAC",
            "--anonymous-auth=false",
            &format!(
                "--service-account-key-file={}",
                certs.join("sa.pub").display()
            ),
            &format!(
                "--service-account-signing-key-file={}",
                certs.join("sa.key").display()
            ),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            &format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--allow-privileged=true",
            // The node's name resolves nowhere (no DNS in the node's netns): dial its address.
            "--kubelet-preferred-address-types=InternalIP",
            "--profiling=false",
            "-v=0",
        ]);
        node.spawn("kube-apiserver", &mut apiserver, state)?;
        node.wait("kube-apiserver /readyz", Duration::from_secs(90), |n| {
            n.kubectl(&["get", "--raw", "/readyz"])
                .is_ok_and(|o| o.trim() == "ok")
        })?;
        phase("etcd and kube-apiserver ready", &mut t);

        // --- controllers and scheduler.
        let kc = format!("--kubeconfig={}", kubeconfig.display());
        let mut cm = Command::new(&node.bins.kube_controller_manager);
        cm.args([
            kc.as_str(),
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--secure-port=10257",
            &format!(
                "--service-account-private-key-file={}",
                certs.join("sa.key").display()
            ),
            &format!("--root-ca-file={}", certs.join("apiserver.crt").display()),
            "--use-service-account-credentials=false",
            "--allocate-node-cidrs=true",
            &format!("--cluster-cidr={CLUSTER_CIDR}"),
            "--node-cidr-mask-size=24",
            &format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "-v=0",
        ]);
        node.spawn("kube-controller-manager", &mut cm, state)?;
        let mut sched = Command::new(&node.bins.kube_scheduler);
        sched.args([
            kc.as_str(),
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--secure-port=10259",
            "-v=0",
        ]);
        node.spawn("kube-scheduler", &mut sched, state)?;

        // --- containerd with the bridge CNI, then the images, then kubelet.
        node.write_containerd_config()?;
        node.write_cni_config(opts.pod_addresses)?;
        let mut containerd = Command::new(&node.bins.containerd);
        containerd
            .arg("--config")
            .arg(dir.join("etc/containerd.toml"));
        node.spawn("containerd", &mut containerd, state)?;
        let sock = node.containerd_socket();
        node.wait("containerd socket", Duration::from_secs(30), |n| {
            sock.exists() && n.ctr(&["version"]).is_ok()
        })?;
        let mut archives = images::test_images(
            &node.bins,
            &dir.join("buildah"),
            &crate::bins::cache_root()?
                .join(format!("images-{}", crate::bins::kubernetes_version()?)),
        )?;
        archives.extend(opts.images.iter().cloned());
        for archive in &archives {
            node.import_image(archive)?;
        }
        phase("containerd up, images imported", &mut t);

        node.write_kubelet_config(&cgroup)?;
        let mut kubelet = Command::new(&node.bins.kubelet);
        kubelet.args([
            &format!("--config={}", dir.join("etc/kubelet.yaml").display()),
            kc.as_str(),
            &format!("--root-dir={}", dir.join("kubelet").display()),
            &format!("--cert-dir={}", dir.join("kubelet/pki").display()),
            &format!("--hostname-override={name}"),
            &format!("--node-ip={NODE_IP}"),
            "-v=1",
        ]);
        node.spawn("kubelet", &mut kubelet, state)?;

        node.write_kube_proxy_config()?;
        let mut proxy = Command::new(&node.bins.kube_proxy);
        proxy.arg(format!(
            "--config={}",
            dir.join("etc/kube-proxy.yaml").display()
        ));
        node.spawn("kube-proxy", &mut proxy, state)?;

        node.wait("Node Ready", Duration::from_mins(2), |n| {
            n.kubectl(&[
                "get",
                "node",
                name,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .is_ok_and(|s| s.trim() == "True")
        })?;
        node.wait(
            "ServiceAccount default/default",
            Duration::from_mins(1),
            |n| {
                n.kubectl(&["get", "serviceaccount", "default", "-n", "default"])
                    .is_ok()
            },
        )?;
        node.wait("the node's podCIDR", Duration::from_mins(1), |n| {
            n.kubectl(&["get", "node", name, "-o", "jsonpath={.spec.podCIDR}"])
                .is_ok_and(|s| s.trim() == POD_SUBNET)
        })?;
        phase("kubelet: Node Ready", &mut t);
        timings.push(("total".into(), started.elapsed()));
        node.timings = timings;
        node.done = false;
        Ok(node)
    }

    /// The admin kubeconfig (token auth; server `https://10.250.0.10:6443`, reachable only
    /// inside the node's netns: run clients there, `ip netns exec <name> kubectl ...`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The node's netns file (`/run/netns/<name>`).
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// The namespaces the node's processes run in (for a test's own helpers).
    pub fn join(&self) -> Join {
        self.join
    }

    pub fn containerd_socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// A kubectl command for the admin, run in the node's netns.
    pub fn kubectl_cmd(&self) -> Command {
        let mut c = Command::new(&self.bins.kubectl);
        c.arg(format!("--kubeconfig={}", self.kubeconfig().display()));
        enter(
            &mut c,
            Join {
                mnt: None,
                ..self.join
            },
        );
        c
    }

    /// Runs kubectl; its stdout, or an error with its stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        sys::run(self.kubectl_cmd().args(args))
    }

    /// `kubectl apply -f -` of a manifest.
    pub fn apply(&self, manifest: &str) -> Result<String> {
        let mut child = self
            .kubectl_cmd()
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("kubectl apply")?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(manifest.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl apply failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ctr` against the node's containerd (namespace `k8s.io`, the CRI's).
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.containerd_socket())
            .args(["--namespace", "k8s.io"])
            .args(args);
        enter(&mut c, self.join);
        sys::run(&mut c)
    }

    /// Loads a docker-archive image into the node's containerd.
    pub fn import_image(&self, archive: &Path) -> Result<()> {
        self.ctr(&["images", "import", &archive.display().to_string()])
            .map(|_| ())
    }

    /// Starts kube-router's NetworkPolicy controller (iptables + ipset, firewall only) on the
    /// node, which must be registered already.
    pub fn start_kube_router(&self) -> Result<()> {
        if !self.bins.kube_router.is_file() {
            bail!(
                "{} not found: run `cargo xtask k8s-bins`",
                self.bins.kube_router.display()
            );
        }
        let mut state = State::open(&self.dir)?;
        let mut c = Command::new(&self.bins.kube_router);
        c.args([
            &format!("--kubeconfig={}", self.kubeconfig().display()),
            &format!("--hostname-override={}", self.name),
            "--run-firewall=true",
            "--run-router=false",
            "--run-service-proxy=false",
            "--enable-cni=false",
            "--enable-ipv6=false",
            "--metrics-port=0",
            "--health-port=20244",
            "-v=1",
        ]);
        self.spawn("kube-router", &mut c, &mut state)?;
        self.wait("kube-router healthz", Duration::from_mins(1), |n| {
            let mut c = Command::new("busybox");
            c.args(["wget", "-q", "-O", "-", "http://127.0.0.1:20244/healthz"]);
            enter(
                &mut c,
                Join {
                    mnt: None,
                    ..n.join
                },
            );
            sys::run(&mut c).is_ok()
        })
    }

    /// Starts a process of the caller's (a Prometheus, say) inside the node's namespaces; it is
    /// recorded and killed with the node.
    pub fn spawn(&self, what: &str, cmd: &mut Command, state: &mut State) -> Result<i32> {
        enter(cmd, self.join);
        let pid = spawn_logged(cmd, &self.dir.join(format!("logs/{what}.log")))?;
        state.pid(pid, what)?;
        Ok(pid)
    }

    /// `spawn` for callers without the state at hand.
    pub fn spawn_extra(&self, what: &str, cmd: &mut Command) -> Result<i32> {
        let mut state = State::open(&self.dir)?;
        self.spawn(what, cmd, &mut state)
    }

    /// A component's log file.
    pub fn log_path(&self, what: &str) -> PathBuf {
        self.dir.join(format!("logs/{what}.log"))
    }

    /// The last lines of every component's log.
    pub fn logs(&self) -> String {
        logs_tail(&self.dir)
    }

    fn wait(&self, what: &str, timeout: Duration, mut ok: impl FnMut(&Node) -> bool) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if ok(self) {
                return Ok(());
            }
            if let Some(dead) = teardown::dead_components(&self.dir) {
                bail!("waiting for {what}: {dead} exited");
            }
            if Instant::now() > deadline {
                bail!("{what}: not within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops everything and checks that nothing is left; `Drop` does the same without the check.
    pub fn down(mut self) -> Result<()> {
        self.done = true;
        self.close_namespaces();
        teardown::teardown(&self.dir)
    }

    fn close_namespaces(&mut self) {
        self.netns = None;
        self.mnt = None;
    }

    /// The inodes of the node's network and mount namespaces: a process in either is the
    /// node's (what a test checks is gone after the teardown).
    pub fn namespace_inodes(&self) -> (u64, u64) {
        let inode = |f: &Option<NsFile>| f.as_ref().and_then(NsFile::inode).unwrap_or(0);
        (inode(&self.netns), inode(&self.mnt))
    }

    fn write_containerd_config(&self) -> Result<()> {
        let d = &self.dir;
        let toml = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # root here lacks CAP_SYS_RESOURCE: runc fails to lower oom_score_adj otherwise.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
"#,
            root = d.join("containerd/root").display(),
            state = d.join("containerd/state").display(),
            sock = self.containerd_socket().display(),
            opt = d.join("containerd/opt").display(),
            pause = images::PAUSE_IMAGE,
            cni_bin = self.bins.cni_bin_dir.display(),
            cni_conf = d.join("cni/net.d").display(),
        );
        std::fs::write(d.join("etc/containerd.toml"), toml)?;
        Ok(())
    }

    fn write_cni_config(&self, pod_addresses: Option<u8>) -> Result<()> {
        let range = pod_range(pod_addresses)?;
        let conf = format!(
            r#"{{
  "cniVersion": "1.0.0",
  "name": "fwnode",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {{
        "type": "host-local",
        "dataDir": "{ipam}",
        "ranges": [[{{"subnet": "{POD_SUBNET}", "gateway": "{POD_GATEWAY}"{range}}}]],
        "routes": [{{"dst": "0.0.0.0/0"}}]
      }}
    }},
    {{"type": "portmap", "capabilities": {{"portMappings": true}}}}
  ]
}}
"#,
            ipam = self.dir.join("cni/ipam").display()
        );
        std::fs::write(self.dir.join("cni/net.d/10-fwnode.conflist"), conf)?;
        Ok(())
    }

    fn write_kubelet_config(&self, cgroup: &str) -> Result<()> {
        let yaml = format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://{sock}
# This machine runs cgroup v1, with swap, without systemd.
failCgroupV1: false
failSwapOn: false
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup}
cgroupsPerQOS: true
enforceNodeAllocatable: []
protectKernelDefaults: false
address: {NODE_IP}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
serializeImagePulls: false
# The disk is the machine's, shared with everything else on it: kubelet must not evict the
# test's pods (the agent's, say) when the machine's disk runs low ("0%" turns a threshold off).
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "0%"
  nodefs.inodesFree: "0%"
  imagefs.available: "0%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
resolvConf: /etc/resolv.conf
hairpinMode: hairpin-veth
nodeStatusUpdateFrequency: 2s
syncFrequency: 5s
fileCheckFrequency: 5s
shutdownGracePeriod: 0s
"#,
            sock = self.containerd_socket().display(),
        );
        std::fs::write(self.dir.join("etc/kubelet.yaml"), yaml)?;
        Ok(())
    }

    fn write_kube_proxy_config(&self) -> Result<()> {
        let yaml = format!(
            r"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
hostnameOverride: {name}
mode: iptables
clusterCIDR: {CLUSTER_CIDR}
bindAddress: {NODE_IP}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
# Zero leaves the conntrack table size and timeouts as they are (they are the machine's).
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  localhostNodePorts: false
",
            kubeconfig = self.kubeconfig().display(),
            name = self.name,
        );
        std::fs::write(self.dir.join("etc/kube-proxy.yaml"), yaml)?;
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.done || self.detached {
            return;
        }
        if std::thread::panicking() {
            eprintln!("node {} (test panicked):\n{}", self.name, self.logs());
        }
        self.close_namespaces();
        if let Err(e) = teardown::teardown(&self.dir) {
            eprintln!("node {} teardown: {e:#}", self.name);
        }
    }
}

/// The host-local range fields limiting the pod addresses to `count` from `.2` (after the
/// gateway), or nothing for the whole subnet.
fn pod_range(count: Option<u8>) -> Result<String> {
    let Some(count) = count else {
        return Ok(String::new());
    };
    let prefix = POD_GATEWAY
        .rsplit_once('.')
        .map(|(p, _)| p)
        .context("POD_GATEWAY is an IPv4 address")?;
    if !(1..=253).contains(&count) {
        bail!("pod_addresses must be 1 to 253, not {count}");
    }
    Ok(format!(
        ", \"rangeStart\": \"{prefix}.2\", \"rangeEnd\": \"{prefix}.{}\"",
        1 + u16::from(count)
    ))
}

fn spawn_logged(cmd: &mut Command, log: &Path) -> Result<i32> {
    let file = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("{}", log.display()))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("spawning {}", cmd.get_program().display()))?;
    let pid = child.id() as i32;
    // The child is reaped by teardown (waitpid), not by a Child handle.
    std::mem::forget(child);
    Ok(pid)
}

fn logs_tail(dir: &Path) -> String {
    let mut out = String::new();
    let Ok(rd) = std::fs::read_dir(dir.join("logs")) else {
        return out;
    };
    let mut logs: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    logs.sort();
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(15)..];
        let _ = write!(
            out,
            "--- {} (last {} lines) ---\n{}\n",
            log.display(),
            tail.len(),
            tail.join("\n")
        );
    }
    out
}

fn kubeconfig_yaml(ca: &Path) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: flowwatch-node
  cluster:
    server: https://{NODE_IP}:6443
    certificate-authority: {ca}
users:
- name: admin
  user:
    token: {ADMIN_TOKEN}
contexts:
- name: flowwatch-node
  context:
    cluster: flowwatch-node
    user: admin
current-context: flowwatch-node
",
        ca = ca.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_range_holds_the_asked_number_of_addresses() {
        assert_eq!(pod_range(None).unwrap(), "");
        assert_eq!(
            pod_range(Some(10)).unwrap(),
            r#", "rangeStart": "10.244.0.2", "rangeEnd": "10.244.0.11""#
        );
        assert!(pod_range(Some(0)).is_err());
        assert!(pod_range(Some(254)).is_err());
    }
}
