//! The start and the end of every command's `main`: find the config file, load and validate the
//! settings; write to stdout without panicking when it is closed; turn the outcome into an exit
//! status.
//!
//! Commands print with [`outln!`](crate::outln) and [`out!`](crate::out), which return the write's
//! `io::Result` instead of panicking like `println!` does when stdout is a closed pipe
//! (`hitl-admin dlq tail | head`). Errors propagate to `main`, and [`finish`] turns a broken pipe
//! into a quiet, successful exit: the reader has all it wanted (the convention of `ls | head`).

use std::{
    collections::HashMap,
    error::Error,
    fmt,
    io::{self, Write},
    path::PathBuf,
    process::ExitCode,
};

use serde::{de::DeserializeOwned, Serialize};

use crate::config::{load, ConfigError, Validate};

/// `println!` that returns the write's `io::Result<()>` instead of panicking (on a closed pipe,
/// for one).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::cli::write_stdout(::std::format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(::std::format_args!("{}\n", ::std::format_args!($($arg)*)))
    };
}

/// `print!` that returns the write's `io::Result<()>` instead of panicking.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(::std::format_args!($($arg)*))
    };
}

/// Writes to stdout (and flushes: the reader sees every line as it is printed, and a closed pipe
/// shows at once). What [`outln!`](crate::outln) and [`out!`](crate::out) call.
pub fn write_stdout(text: fmt::Arguments<'_>) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    stdout.write_fmt(text)?;
    stdout.flush()
}

/// Whether `error`, or any error in its chain of sources, is a write to a closed pipe.
pub fn is_broken_pipe(error: &(dyn Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error
            .downcast_ref::<io::Error>()
            .is_some_and(|error| error.kind() == io::ErrorKind::BrokenPipe)
        {
            return true;
        }
        next = error.source();
    }
    false
}

/// The exit status of a command's outcome: its own status on success; 0 when it stopped because
/// stdout was closed (a broken pipe); otherwise the error, printed as Rust prints an error `main`
/// returns, and status 1.
pub fn finish<E>(outcome: Result<ExitCode, E>) -> ExitCode
where
    E: AsRef<dyn Error + 'static> + fmt::Debug,
{
    match outcome {
        Ok(code) => code,
        Err(error) if is_broken_pipe(error.as_ref()) => ExitCode::SUCCESS,
        Err(error) => {
            // Not `eprintln!`: it panics, too, if stderr is closed.
            let _ = writeln!(io::stderr(), "Error: {error:?}");
            ExitCode::FAILURE
        }
    }
}

/// The exit status of a configuration that cannot be used: 2, before anything starts.
pub const BAD_CONFIG: u8 = 2;

/// Prints why the settings cannot be used (`hitl: refusing to start: ...`, every problem) and
/// returns the exit status for `main` to end with ([`BAD_CONFIG`]).
pub fn refuse_to_start(error: &ConfigError) -> ExitCode {
    let _ = writeln!(io::stderr(), "hitl: refusing to start: {error}");
    ExitCode::from(BAD_CONFIG)
}

/// The config file (`--dev` aside, which accepts development keys): `--config PATH` (or `-c PATH`), else `HITL_CONFIG`, else none (defaults and
/// environment only).
pub fn config_path(args: &[String], environment: &HashMap<String, String>) -> Option<PathBuf> {
    args.windows(2)
        .find(|pair| pair[0] == "--config" || pair[0] == "-c")
        .map(|pair| PathBuf::from(&pair[1]))
        .or_else(|| environment.get("HITL_CONFIG").map(PathBuf::from))
}

/// Loads the settings from the process's arguments and environment. On error, `main` prints every
/// problem and exits with status 2 ([`refuse_to_start`]), before anything starts.
pub fn load_from_process<T>() -> Result<T, ConfigError>
where
    T: Default + Serialize + DeserializeOwned + Validate,
{
    let args: Vec<String> = std::env::args().collect();
    let mut environment: HashMap<String, String> = std::env::vars().collect();
    if args.iter().skip(1).any(|arg| arg == "--dev") {
        // Development mode: the keys published in the repository are accepted (docs/trust.md).
        environment.insert("HITL_TRUST__DEV".into(), "true".into());
    }
    let path = config_path(&args, &environment);
    load::<T>(path.as_deref(), &environment)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapper(io::Error);

    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("writing the report")
        }
    }

    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_broken_pipe_is_found_anywhere_in_the_chain() {
        let pipe = || io::Error::from(io::ErrorKind::BrokenPipe);
        assert!(is_broken_pipe(&pipe()));
        assert!(is_broken_pipe(&Wrapper(pipe())));
        assert!(!is_broken_pipe(&Wrapper(io::Error::from(
            io::ErrorKind::NotFound
        ))));
    }

    #[test]
    fn a_broken_pipe_ends_the_command_successfully() {
        let pipe: Result<ExitCode, Box<dyn Error>> = Err(Box::new(Wrapper(io::Error::from(
            io::ErrorKind::BrokenPipe,
        ))));
        assert_eq!(finish(pipe), ExitCode::SUCCESS);
        let other: Result<ExitCode, Box<dyn Error>> = Err("no broker".into());
        assert_eq!(finish(other), ExitCode::FAILURE);
        let status: Result<ExitCode, Box<dyn Error>> = Ok(ExitCode::from(1));
        assert_eq!(finish(status), ExitCode::from(1));
    }
}
