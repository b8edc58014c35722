//! `sluice-agent`: the Sluice node agent binary.
//!
//! Without a subcommand it runs the agent (the flags of [`sluice_agent::cli::Cli`]);
//! `sluice-agent debug dump` prints a proxy mode's kernel state and exits; `sluice-agent image
//! import` loads image tarballs into containerd.

use clap::Parser;
use sluice_agent::cli::{Command, DebugCommand, ImageCommand, Invocation};

fn main() -> std::process::ExitCode {
    sluice_proxy::heap::limit_arenas();
    let inv = Invocation::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let cli = match (inv.command, inv.run) {
        (Some(Command::Debug(DebugCommand::Dump(args))), _) => {
            return match sluice_agent::debug::dump(&args) {
                Ok(text) => {
                    print!("{text}");
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sluice-agent: debug dump: {e}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        (Some(Command::Image(ImageCommand::Import(args))), _) => {
            return match sluice_agent::pods::cri::import_images(
                &args.container_runtime_endpoint,
                &args.files,
            ) {
                Ok(lines) => {
                    for l in lines {
                        println!("{l}");
                    }
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sluice-agent: image import: {e}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        (None, Some(cli)) => cli,
        // clap requires the agent's flags when there is no subcommand.
        (None, None) => {
            eprintln!("sluice-agent: missing --kubeconfig and --node-name (see --help)");
            return std::process::ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice-agent: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(sluice_agent::agent::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-agent: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
