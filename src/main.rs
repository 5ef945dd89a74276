//! The `drift` binary: a thin edge over the library. Parses the command
//! line, sets up logging, runs the command and turns its error into a
//! message and an exit status.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = drift::cli::Cli::parse();
    drift::cli::init_logging(cli.log.as_deref());
    match drift::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            // A closed stdout (`drift journal list | head`) is not an error.
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::BrokenPipe {
                    return ExitCode::SUCCESS;
                }
            }
            eprintln!("drift: error: {}", drift::cli::error_message(&err));
            ExitCode::from(drift::cli::EXIT_FAILURE)
        }
    }
}
