//! The integration suite: every test starts the real `execd` binary on a loopback port.

mod util;
