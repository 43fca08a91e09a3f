//! `flowwatch`: the agent (`flowwatch run`) and the offline policy tools (`flowwatch policy`).

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};
use flowwatch::cli::{LogFormat, RunArgs};

#[derive(Parser)]
#[command(
    name = "flowwatch",
    version,
    about = "eBPF flow observer for Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: capture flows on this node, enrich them, export metrics.
    Run(Box<RunArgs>),
    /// Offline NetworkPolicy tools over `kubectl get ... -o yaml` snapshots and manifests.
    #[command(subcommand)]
    Policy(flowwatch::policy_cli::PolicyCommand),
    /// Write one self-contained HTML page of the observed traffic (flow logs or Prometheus)
    /// judged by a snapshot's policies: the workload graph coloured by verdict, coverage per
    /// namespace, unused rules and the advised policies. Nothing is loaded when it is opened.
    Report(Box<flowwatch::policy_cli::report::ReportArgs>),
    /// Print shell completions (`flowwatch completions bash > /etc/bash_completion.d/flowwatch`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the version, the commit it was built from and the eBPF object's SHA-256.
    Version,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version on stdout, exit 0. A usage error exits 1, not clap's 2: the policy
        // tools promise 2 for a snapshot that cannot be read, and scripts must tell the two
        // apart.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // A bad value gets one line: what is wrong and what would be right (the parsers in
        // `flowwatch::cli::values` say both), without clap's usage footer.
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ValueValidation | ErrorKind::InvalidValue
            ) =>
        {
            eprintln!(
                "{}",
                flowwatch::cli::values::one_line_error(&e.render().to_string())
            );
            return ExitCode::from(1);
        }
        Err(e) => {
            match (e.kind() == ErrorKind::UnknownArgument)
                .then(|| flowwatch::cli::values::dash_value_error(&e.render().to_string()))
                .flatten()
            {
                Some(line) => eprintln!("{line}"),
                None => {
                    let _ = e.print();
                }
            }
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Command::Run(args) => run_agent(*args),
        Command::Policy(cmd) => flowwatch::policy_cli::run(cmd),
        Command::Report(args) => flowwatch::policy_cli::report::run(&args),
        Command::Completions { shell } => {
            use std::io::Write;

            use clap::CommandFactory;
            // Into a buffer first: the generator panics on a write error (`| head`).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "flowwatch", &mut script);
            match std::io::stdout().lock().write_all(&script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    eprintln!("error: writing output: {e}");
                    ExitCode::from(3)
                }
                _ => ExitCode::SUCCESS,
            }
        }
        Command::Version => {
            println!("flowwatch {}", env!("CARGO_PKG_VERSION"));
            println!("commit: {}", env!("FLOWWATCH_GIT_COMMIT"));
            println!(
                "ebpf object: sha256:{}",
                flowwatch::datapath::object_sha256()
            );
            ExitCode::SUCCESS
        }
    }
}

fn run_agent(args: RunArgs) -> ExitCode {
    // Before the runtime's threads exist: large blocks mapped, few arenas (see the module).
    flowwatch::allocator::tune();
    init_tracing(args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    match runtime.block_on(flowwatch::agent::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// One clear line on stderr, with the causes, and a non-zero exit; never a backtrace.
fn fail(e: &dyn std::error::Error) -> ExitCode {
    eprintln!("error: {}", flowwatch::error_chain::Chain(e));
    ExitCode::FAILURE
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("FLOWWATCH_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
