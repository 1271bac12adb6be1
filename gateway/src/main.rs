//! The `wisp` binary.

#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = wisp::cli::Cli::parse();
    wisp::cli::init_logging(&cli.log, &cli.log_format);
    // Containers are cloned by a spawner process forked now, while this
    // process still has one thread (the async runtime starts below).
    let spawner = match &cli.command {
        wisp::cli::Command::Serve(args) => {
            Some(wisp_runner::container::spawner::SpawnerHandle::launch(
                wisp_runner::container::plan::IdMap::default(),
                args.reuse_netns,
            ))
        }
        _ => None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("wisp: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(wisp::cli::run(cli, spawner)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wisp: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
