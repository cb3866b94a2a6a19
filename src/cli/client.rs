//! The HTTP side of the client: requests to sandboxd with the caller's credentials, and to a
//! sandbox's execd through sandboxd's server proxy (or straight, for `exec --execd`). Every
//! error answer becomes [`CliError::Api`] with the server's `{code, message}`.

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;

use super::error::CliError;
use crate::wire::lifecycle::Endpoint;

/// execd's port inside every sandbox.
pub const EXECD_PORT: u16 = 44772;
/// The header carrying execd's access token.
pub const EXECD_TOKEN_HEADER: &str = "X-EXECD-ACCESS-TOKEN";

/// How the caller proves who it is to sandboxd.
#[derive(Debug, Clone)]
pub enum Auth {
    /// No credential (a sandboxd without `--api-key`).
    None,
    /// `OPEN-SANDBOX-API-KEY`.
    ApiKey(String),
    /// `Authorization: Bearer` with a user token.
    Bearer(String),
}

/// A sandboxd to talk to.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    /// `scheme://host:port` with no trailing slash.
    server: String,
    /// The credential headers every request carries.
    auth: HeaderMap,
}

impl Client {
    /// A client for `server` (a URL; `http://` is assumed when no scheme is given).
    pub fn new(server: &str, auth: Auth) -> Result<Self, CliError> {
        let server = normalize_base(server)?;
        let mut headers = HeaderMap::new();
        let header = |value: &str| {
            HeaderValue::from_str(value)
                .map(|mut v| {
                    v.set_sensitive(true);
                    v
                })
                .map_err(|_| CliError::Usage("the credential has characters a header cannot carry".into()))
        };
        match auth {
            Auth::None => {}
            Auth::ApiKey(key) => {
                headers.insert("OPEN-SANDBOX-API-KEY", header(&key)?);
            }
            Auth::Bearer(token) => {
                headers.insert(
                    reqwest::header::AUTHORIZATION,
                    header(&format!("Bearer {token}"))?,
                );
            }
        }
        Ok(Self {
            http: http_client()?,
            server,
            auth: headers,
        })
    }

    /// A request to `/v1{path}`.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}/v1{path}", self.server))
            .headers(self.auth.clone())
    }

    /// Sends `request` and parses the JSON answer.
    pub async fn json<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, CliError> {
        json(send(request).await?).await
    }

    /// The execd of sandbox `id`, through sandboxd's server proxy: the endpoint API gives the
    /// path and execd's token; the requests go to this client's server with its credentials.
    pub async fn execd(&self, id: &str) -> Result<Execd, CliError> {
        let path = format!("/sandboxes/{id}/endpoints/{EXECD_PORT}?use_server_proxy=true");
        let endpoint: Endpoint = self.json(self.request(Method::GET, &path)).await?;
        // `host:port/v1/sandboxes/{id}/proxy/44772`: keep the path, but on the server this
        // client reached (the advertised host may be a name only the server's side resolves).
        let proxy_path = endpoint
            .endpoint
            .split_once('/')
            .map(|(_, path)| path)
            .unwrap_or_default();
        let mut headers = self.auth.clone();
        for (name, value) in &endpoint.headers {
            let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::from_str(value)) else {
                continue;
            };
            headers.insert(name, value);
        }
        Ok(Execd {
            http: self.http.clone(),
            base: format!("{}/{proxy_path}", self.server),
            headers,
        })
    }
}

/// A sandbox's execd: a base URL and the headers every request to it carries.
#[derive(Debug, Clone)]
pub struct Execd {
    http: reqwest::Client,
    /// Base URL with no trailing slash.
    pub base: String,
    /// Credentials (sandboxd's, when through the proxy) and execd's token.
    pub headers: HeaderMap,
}

impl Execd {
    /// An execd reached directly (a port-forward), with its access token when given.
    pub fn direct(url: &str, token: Option<&str>) -> Result<Self, CliError> {
        let mut headers = HeaderMap::new();
        if let Some(token) = token {
            let mut value = HeaderValue::from_str(token)
                .map_err(|_| CliError::Usage("the token has characters a header cannot carry".into()))?;
            value.set_sensitive(true);
            headers.insert(EXECD_TOKEN_HEADER, value);
        }
        Ok(Self {
            http: http_client()?,
            base: normalize_base(url)?,
            headers,
        })
    }

    /// A request to `{base}{path}`.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .headers(self.headers.clone())
    }
}

/// Sends a request; an error status becomes the server's `{code, message}`.
pub async fn send(request: RequestBuilder) -> Result<Response, CliError> {
    let (client, request) = request.build_split();
    let request = request.map_err(|source| CliError::Transport {
        what: "cannot build the request".into(),
        source,
    })?;
    let url = request.url().to_string();
    let response = client.execute(request).await.map_err(|source| {
        if source.is_connect() {
            let server = url.split('/').take(3).collect::<Vec<_>>().join("/");
            CliError::Unreachable { server, source }
        } else {
            CliError::Transport {
                what: format!("request to {url} failed"),
                source,
            }
        }
    })?;
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    #[derive(serde::Deserialize)]
    struct Body {
        code: String,
        message: String,
    }
    Err(match serde_json::from_str::<Body>(&body) {
        Ok(Body { code, message }) => CliError::Api {
            status,
            code,
            message,
        },
        Err(_) => CliError::Status {
            status,
            url,
            body: body.chars().take(200).collect(),
        },
    })
}

/// Parses a JSON answer.
pub async fn json<T: DeserializeOwned>(response: Response) -> Result<T, CliError> {
    let url = response.url().to_string();
    let bytes = response.bytes().await.map_err(|source| CliError::Transport {
        what: format!("reading the answer of {url}"),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| CliError::Decode { url, source })
}

fn http_client() -> Result<reqwest::Client, CliError> {
    reqwest::Client::builder()
        .user_agent(concat!("sandboxd-cli/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|source| CliError::Transport {
            what: "cannot set up the HTTP client".into(),
            source,
        })
}

/// `host:port` or a URL → `scheme://host:port[/path]` without a trailing slash. Only plain
/// HTTP: neither sandboxd nor execd speaks TLS, and the client links none.
fn normalize_base(url: &str) -> Result<String, CliError> {
    let url = url.trim().trim_end_matches('/');
    if url.is_empty() {
        return Err(CliError::Usage("the server URL is empty".into()));
    }
    if url.starts_with("https://") {
        return Err(CliError::Usage(format!(
            "{url}: https is not supported (sandboxd serves plain HTTP; put TLS in front with a port-forward or tunnel)"
        )));
    }
    if url.starts_with("http://") {
        Ok(url.to_owned())
    } else if url.contains("://") {
        Err(CliError::Usage(format!("{url}: only http:// URLs are supported")))
    } else {
        Ok(format!("http://{url}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_are_plain_http_without_a_trailing_slash() {
        assert_eq!(normalize_base("127.0.0.1:8080").unwrap(), "http://127.0.0.1:8080");
        assert_eq!(normalize_base("http://h:1/").unwrap(), "http://h:1");
        assert!(normalize_base("https://h").is_err());
        assert!(normalize_base("ftp://h").is_err());
        assert!(normalize_base(" ").is_err());
    }
}
