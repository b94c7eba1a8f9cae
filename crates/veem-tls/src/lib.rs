//! TLS for every veem connection: the one crate that builds rustls configurations and
//! certificates. It loads PEM files, makes the server's configuration (with optional client
//! certificates for host agents), the clients' (system roots plus a site CA, and a client
//! certificate where the peer asks for one), and `veem tls init`'s certificates. It never opens a
//! socket: the server, the agent and the client bring their own.
