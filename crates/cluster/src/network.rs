//! Node-to-node traffic of the metadata log, on the internal listener: Raft
//! RPCs (append entries, vote, install snapshot) and commands forwarded to
//! the leader. Frames are `len u32 (big-endian) | JSON`; one request at a
//! time per connection, answered in order. Each Raft replication stream keeps
//! its connection and reconnects after an error.

use crate::metadata::Command;
use crate::raft::{CommandResult, RaftNodeId, TypeConfig};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft, RaftNetwork, RaftNetworkFactory};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest frame accepted (a snapshot of the whole metadata travels in one).
const FRAME_BYTES_MAX: usize = 256 << 20;

#[derive(Serialize, Deserialize)]
pub(crate) enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<RaftNodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A command for the leader to append (sent by a node that is not it).
    Propose(Command),
    /// A node (by Kafka node id) says it is alive.
    Heartbeat(i32),
    /// A node that is not a voter asks the leader to replicate the log to it.
    AddLearner {
        id: RaftNodeId,
        addr: String,
    },
}

#[derive(Serialize, Deserialize)]
pub(crate) enum Response {
    AppendEntries(Result<AppendEntriesResponse<RaftNodeId>, RaftError<RaftNodeId>>),
    Vote(Result<VoteResponse<RaftNodeId>, RaftError<RaftNodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<RaftNodeId>, RaftError<RaftNodeId, InstallSnapshotError>>,
    ),
    /// The command's result, or why it was not appended (e.g. no leader here).
    Propose(Result<CommandResult, String>),
    Heartbeat,
    AddLearner(Result<(), String>),
}

async fn write_frame<T: Serialize>(stream: &mut TcpStream, message: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    stream
        .write_all(&(bytes.len() as u32).to_be_bytes())
        .await?;
    stream.write_all(&bytes).await?;
    stream.flush().await
}

async fn read_frame<T: for<'de> Deserialize<'de>>(stream: &mut TcpStream) -> std::io::Result<T> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes"),
        ));
    }
    let mut bytes = vec![0u8; len];
    stream.read_exact(&mut bytes).await?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}

/// How long a proposal or heartbeat forwarded to the leader may take.
pub(crate) const RPC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// [`call`] bounded by `limit`; the connection is dropped when it runs out
/// (a peer whose packets are dropped never answers and never resets).
pub(crate) async fn call_within(
    connection: &mut Option<TcpStream>,
    addr: &str,
    request: &Request,
    limit: std::time::Duration,
) -> std::io::Result<Response> {
    match tokio::time::timeout(limit, call(connection, addr, request)).await {
        Ok(result) => result,
        Err(_) => {
            *connection = None;
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer from {addr} within {limit:?}"),
            ))
        }
    }
}

/// One request and its answer over `connection` (connecting to `addr` first if needed).
pub(crate) async fn call(
    connection: &mut Option<TcpStream>,
    addr: &str,
    request: &Request,
) -> std::io::Result<Response> {
    if connection.is_none() {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        *connection = Some(stream);
    }
    let stream = connection.as_mut().expect("connected");
    let result = async {
        write_frame(stream, request).await?;
        read_frame(stream).await
    }
    .await;
    if result.is_err() {
        *connection = None;
    }
    result
}

/// Serves the internal listener: Raft RPCs go to `raft`, proposals to `propose`.
pub(crate) async fn serve<F, Fut>(
    listener: TcpListener,
    raft: Raft<TypeConfig>,
    propose: F,
    heartbeats: crate::controller::Heartbeats,
) where
    F: Fn(Command) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<CommandResult, String>> + Send,
{
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let raft = raft.clone();
        let propose = propose.clone();
        let heartbeats = heartbeats.clone();
        tokio::spawn(async move {
            while let Ok(request) = read_frame::<Request>(&mut stream).await {
                let response = match request {
                    Request::AppendEntries(rpc) => {
                        Response::AppendEntries(raft.append_entries(rpc).await)
                    }
                    Request::Vote(rpc) => Response::Vote(raft.vote(rpc).await),
                    Request::InstallSnapshot(rpc) => {
                        Response::InstallSnapshot(raft.install_snapshot(rpc).await)
                    }
                    Request::Propose(command) => Response::Propose(propose(command).await),
                    Request::Heartbeat(node) => {
                        heartbeats
                            .lock()
                            .unwrap()
                            .insert(node, std::time::Instant::now());
                        Response::Heartbeat
                    }
                    Request::AddLearner { id, addr } => Response::AddLearner(
                        raft.add_learner(id, BasicNode::new(addr), false)
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string()),
                    ),
                };
                if write_frame(&mut stream, &response).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Makes a client per target node (openraft asks for one per replication stream).
#[derive(Clone, Default)]
pub struct Network;

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = NodeClient;

    async fn new_client(&mut self, target: RaftNodeId, node: &BasicNode) -> NodeClient {
        NodeClient {
            target,
            addr: node.addr.clone(),
            connection: None,
        }
    }
}

pub struct NodeClient {
    target: RaftNodeId,
    addr: String,
    connection: Option<TcpStream>,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<RaftNodeId, BasicNode, RaftError<RaftNodeId, E>>>;

impl NodeClient {
    async fn send(
        &mut self,
        request: Request,
        option: &RPCOption,
    ) -> Result<Response, Unreachable> {
        match tokio::time::timeout(
            option.hard_ttl(),
            call(&mut self.connection, &self.addr, &request),
        )
        .await
        {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(Unreachable::new(&e)),
            Err(elapsed) => {
                self.connection = None;
                Err(Unreachable::new(&elapsed))
            }
        }
    }

    fn remote<E: std::error::Error>(
        &self,
        error: RaftError<RaftNodeId, E>,
    ) -> RPCError<RaftNodeId, BasicNode, RaftError<RaftNodeId, E>> {
        RPCError::RemoteError(RemoteError::new(self.target, error))
    }
}

fn unexpected() -> Unreachable {
    Unreachable::new(&std::io::Error::other("unexpected response kind"))
}

impl RaftNetwork<TypeConfig> for NodeClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<RaftNodeId>> {
        match self.send(Request::AppendEntries(rpc), &option).await? {
            Response::AppendEntries(result) => result.map_err(|e| self.remote(e)),
            _ => Err(unexpected().into()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<RaftNodeId>, InstallSnapshotError> {
        match self.send(Request::InstallSnapshot(rpc), &option).await? {
            Response::InstallSnapshot(result) => result.map_err(|e| self.remote(e)),
            _ => Err(unexpected().into()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<RaftNodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<RaftNodeId>> {
        match self.send(Request::Vote(rpc), &option).await? {
            Response::Vote(result) => result.map_err(|e| self.remote(e)),
            _ => Err(unexpected().into()),
        }
    }
}
