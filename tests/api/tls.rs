//! TLS to Redis, as on Azure (Azure Cache for Redis and Azure Managed Redis accept TLS only):
//! a `redis-server` with TLS only (`--port 0 --tls-port ...`) and a certificate for
//! `localhost`/`127.0.0.1` from a throwaway CA made with `openssl`. The handler trusts that CA
//! through `SSL_CERT_FILE`, which the redis crate's rustls honours (it loads its roots with
//! `rustls-native-certs`, which reads `SSL_CERT_FILE`/`SSL_CERT_DIR` instead of the system
//! store when either is set). Both connection-string forms are covered: `rediss://host:port`
//! and the portal's StackExchange.Redis form with a password holding `/`, `+` and `=`. A
//! handler that does not trust the CA must not use the cache at all.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, TlsCertificates};

use crate::support::redis_server::free_port;
use crate::support::scratch::ScratchDir;
use crate::support::{Mode, Stack};

both_modes!(rediss_url_and_stackexchange_form_over_tls);

/// A password with the characters that break naive URL or option parsing.
const PASSWORD: &str = "s3cr/t+pa=ss/w0rd==";

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl on PATH (scripts/lib.sh ensure_openssl: apt-get install openssl)");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Makes `<name>-ca.pem`/`<name>-ca.key`: a self-signed P-256 CA valid for two days.
fn make_ca(dir: &Path, name: &str) -> PathBuf {
    let (key, pem) = (format!("{name}-ca.key"), format!("{name}-ca.pem"));
    let subject = format!("/CN=cosmos-cache-handler test CA {name}");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-subj",
            &subject,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    dir.join(pem)
}

/// Makes `server.pem`/`server.key` for `localhost` and `127.0.0.1`, signed by the `test` CA.
fn make_server_certificate(dir: &Path) {
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("write server.ext");
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "test-ca.pem",
            "-CAkey",
            "test-ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
}

/// A `redis-server` that speaks TLS only. Killed on drop.
struct TlsRedis {
    child: Child,
    port: u16,
    password: Option<String>,
    ca_pem: Vec<u8>,
}

impl TlsRedis {
    fn start(dir: &Path, password: Option<&str>) -> Self {
        let port = free_port();
        let port_text = port.to_string();
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let (cert, key, ca) = (path("server.pem"), path("server.key"), path("test-ca.pem"));
        let mut args = vec![
            "--port",
            "0",
            "--tls-port",
            &port_text,
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ];
        if let Some(p) = password {
            args.extend(["--requirepass", p]);
        }
        let log = std::fs::File::create(dir.join(format!("redis-{port}.log"))).expect("log");
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("redis-server on PATH (apt-get install redis-server)");
        let server = Self {
            child,
            port,
            password: password.map(str::to_string),
            ca_pem: std::fs::read(dir.join("test-ca.pem")).expect("CA"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.connection().is_err() {
            assert!(
                Instant::now() < deadline,
                "TLS redis-server did not answer on {port}; see {}",
                dir.join(format!("redis-{port}.log")).display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// A connection of the test's own, over TLS, trusting only the test CA.
    fn connection(&self) -> redis::RedisResult<redis::Connection> {
        let mut settings = RedisConnectionInfo::default();
        if let Some(p) = &self.password {
            settings = settings.set_password(p.clone());
        }
        let info = ConnectionAddr::TcpTls {
            host: "localhost".into(),
            port: self.port,
            insecure: false,
            tls_params: None,
        }
        .into_connection_info()?
        .set_redis_settings(settings);
        let client = redis::Client::build_with_tls(
            info,
            TlsCertificates {
                client_tls: None,
                root_cert: Some(self.ca_pem.clone()),
            },
        )?;
        let mut conn = client.get_connection_with_timeout(Duration::from_millis(500))?;
        redis::cmd("PING").query::<String>(&mut conn)?;
        Ok(conn)
    }

    /// Keys in this server.
    fn keys(&self) -> Vec<String> {
        let mut conn = self
            .connection()
            .expect("TLS connection to the test redis-server");
        let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).expect("KEYS");
        keys.sort();
        keys
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Restarts the handler on `connection_string`, trusting exactly the roots in `ca_file`.
async fn restart_handler(stack: &mut Stack, connection_string: &str, ca_file: &Path, dir: &Path) {
    stack.set_env("REDIS_CONNECTION_STRING", connection_string);
    stack.set_env("SSL_CERT_FILE", &ca_file.to_string_lossy());
    // An empty directory: no system roots either, so only SSL_CERT_FILE decides.
    let empty = dir.join("no-certs");
    std::fs::create_dir_all(&empty).expect("empty cert dir");
    stack.set_env("SSL_CERT_DIR", &empty.to_string_lossy());
    stack.start_handler().await;
}

async fn miss_then_hit(stack: &Stack, query: &str, what: &str) -> String {
    let first = stack.get(query).await;
    assert_eq!(first.status, 200, "{what}: {}", first.text);
    assert_eq!(first.cache(), "miss", "{what}: first call");
    let second = stack.get(query).await;
    assert_eq!(second.status, 200, "{what}: {}", second.text);
    assert_eq!(second.cache(), "hit", "{what}: second call");
    assert_eq!(second.text, first.text, "{what}: hit body = miss body");
    first.text
}

async fn rediss_url_and_stackexchange_form_over_tls(mode: Mode) {
    cosmos_cache_handler::install_crypto_provider();
    let dir = ScratchDir::new("tls");
    let trusted = make_ca(dir.path(), "test");
    let untrusted = make_ca(dir.path(), "other");
    make_server_certificate(dir.path());
    // The connection timeout is REDIS_TIMEOUT_MS (default 250 ms) and covers the first TLS
    // handshake, which a debug build on a busy 2-core machine can exceed; a bypass then would
    // say nothing about TLS. This test is about TLS, not about timeouts.
    let mut stack = Stack::services(mode, true, &[("REDIS_TIMEOUT_MS", "3000")]);
    let entry_prefix = format!("cc:{}:", stack.key_tag());

    // 1. rediss://localhost:<port>, no password.
    let open = TlsRedis::start(dir.path(), None);
    let url = format!("rediss://localhost:{}", open.port);
    restart_handler(&mut stack, &url, &trusted, dir.path()).await;
    let texas = miss_then_hit(&stack, "query?state=Texas&maxItemCount=1000", "rediss://").await;
    let keys = open.keys();
    assert!(
        keys.iter().any(|k| k.starts_with(&entry_prefix)) && keys.len() >= 2,
        "the page and the generation are in the TLS server: {keys:?}"
    );
    assert!(
        stack.redis_keys().is_empty(),
        "nothing went to the plain-TCP Redis"
    );

    // 2. The portal's StackExchange.Redis form, password with `/`, `+`, `=`.
    let locked = TlsRedis::start(dir.path(), Some(PASSWORD));
    let portal = format!(
        "localhost:{},password={PASSWORD},ssl=True,abortConnect=False",
        locked.port
    );
    restart_handler(&mut stack, &portal, &trusted, dir.path()).await;
    let texas_again = miss_then_hit(
        &stack,
        "query?state=Texas&maxItemCount=1000",
        "StackExchange form",
    )
    .await;
    assert_eq!(texas_again, texas);
    assert!(
        locked.keys().iter().any(|k| k.starts_with(&entry_prefix)),
        "the page is in the password-protected TLS server"
    );

    // 3. Certificates are verified: trusting another CA, the handler cannot use the server
    //    that holds the cached page (a trusting handler would answer `hit`): Cosmos answers.
    restart_handler(&mut stack, &url, &untrusted, dir.path()).await;
    for call in 1..=2 {
        let reply = stack.get("query?state=Texas&maxItemCount=1000").await;
        assert_eq!(reply.status, 200, "untrusted CA: {}", reply.text);
        assert_eq!(reply.cache(), "bypass", "untrusted CA, call {call}");
        assert_eq!(
            reply.text, texas,
            "untrusted CA: the page comes from Cosmos"
        );
    }
    stack.shutdown().await;
}
