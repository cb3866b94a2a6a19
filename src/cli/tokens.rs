//! `token create|current|revoke`: user tokens (`/v1/tokens`).

use reqwest::Method;

use super::client::send;
use super::connect::Connection;
use super::error::CliError;
use super::output::{print_structured, table, write_stdout, Format, OutputArgs};
use crate::wire::identity::{CreateToken, CurrentPrincipal, Token};

/// `token`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Mint a token for a user and print it (use it as --token or SANDBOXD_TOKEN).
    #[command(
        after_help = "Example:\n  export SANDBOXD_TOKEN=$(sandboxd token create alice --role user --ttl 3600)"
    )]
    Create {
        /// The user the token is for (1–128 of A-Z a-z 0-9 . _ @ -).
        user: String,
        /// `admin`, `user` or `viewer`; at most the caller's own.
        #[arg(long, default_value = "user")]
        role: String,
        /// Lifetime in seconds, 60–604800.
        #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
        ttl: u64,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Show who the current credential is (user, role, token id and expiry).
    Current {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Revoke a token by its id (it is refused from then on until it would have expired).
    Revoke {
        /// The token's id (`tokenId` from create, or `token current`).
        token_id: String,
    },
}

/// Runs a `token` subcommand.
pub async fn token(args: TokenArgs) -> Result<u8, CliError> {
    let client = args.conn.client()?;
    match args.command {
        TokenCommand::Create {
            user,
            role,
            ttl,
            output,
        } => {
            let body = CreateToken {
                user_id: user,
                role: Some(role),
                ttl_seconds: Some(ttl),
            };
            let token: Token = client
                .json(client.request(Method::POST, "/tokens").json(&body))
                .await?;
            match output.format {
                // Only the token on stdout, so that `$(sandboxd token create …)` is the token.
                Format::Table => {
                    write_stdout(format!("{}\n", token.access_token).as_bytes())?;
                    eprintln!(
                        "token {} for {} ({}), expires {}",
                        token.token_id, token.user_id, token.role, token.expires_at
                    );
                }
                format => print_structured(format, &token)?,
            }
        }
        TokenCommand::Current { output } => {
            let me: CurrentPrincipal = client
                .json(client.request(Method::GET, "/tokens/current"))
                .await?;
            match output.format {
                Format::Table => {
                    let row = vec![
                        me.user_id.clone(),
                        me.role.clone(),
                        me.auth_method.clone(),
                        me.token_id.clone().unwrap_or_else(|| "-".into()),
                        me.expires_at.clone().unwrap_or_else(|| "-".into()),
                    ];
                    write_stdout(table(&["USER", "ROLE", "AUTH", "TOKEN ID", "EXPIRES"], &[row]).as_bytes())?;
                }
                format => print_structured(format, &me)?,
            }
        }
        TokenCommand::Revoke { token_id } => {
            send(client.request(Method::DELETE, &format!("/tokens/{token_id}"))).await?;
            write_stdout(format!("{token_id}\n").as_bytes())?;
        }
    }
    Ok(0)
}
