"""The chain client's transactor and relay decoding: a node's failure is NodeUnavailable, its answer
about a transaction a refusal, a revert mined on chain says so, and an access list is decoded."""

from __future__ import annotations

import time
from typing import Any

import pytest
from eth_account import Account
from eth_utils import keccak
from hexbytes import HexBytes
from proxy_support import NODE_TROUBLE, NODE_TROUBLE_IDS, Answer, failing_node, silent_node
from web3 import HTTPProvider
from world import World

from chain_client import errors
from chain_client.chain import connect
from chain_client.relay import decode_raw
from chain_client.settings import Settings
from chain_client.transactions import PreparedTx, Transactor, call_checked


@pytest.mark.parametrize("answer", NODE_TROUBLE, ids=NODE_TROUBLE_IDS)
def test_node_trouble_is_node_unavailable_not_a_refusal(
    world: World, monkeypatch: pytest.MonkeyPatch, answer: Answer
) -> None:
    """An estimate or a send that the node (or the proxy before it) did not serve says nothing
    about the transaction: NodeUnavailable, never TransactionRejected ("will not run it", "nothing
    pending"), which a client would take as final, or for a send as licence to sign anew."""
    s1 = world.cast.supplier1
    fn = world.ledger.contract.functions.withdraw()
    tx = Transactor(world.chain, world.system.decoder)
    unsigned: dict[str, Any] = {
        "to": world.ledger.address,
        "data": "0x",
        "nonce": 0,
        "gas": 50_000,
        "gasPrice": 10**9,
        "chainId": 1,
    }
    raw = bytes(s1.sign_transaction(unsigned).raw_transaction)
    with failing_node(answer) as url:
        monkeypatch.setattr(world.chain.w3, "provider", HTTPProvider(url))
        monkeypatch.setattr(world.chain, "embedded", False)  # a node: estimated at its pending block
        with pytest.raises(errors.NodeUnavailable):
            tx.estimate(s1.address, fn)
        with pytest.raises(errors.NodeUnavailable):
            tx.broadcast(PreparedTx("0x" + keccak(raw).hex(), raw, s1.address, 0))
        if answer[1] is None or answer[1]["code"] != -32603:
            # A call's internal error may be the EVM's verdict (anvil: "EVM error OutOfGas"): the
            # caller decides (the relay: SimulationFailed); the API answers any left over with 503.
            with pytest.raises(errors.NodeUnavailable):
                call_checked(lambda: world.chain.w3.eth.get_transaction_count(s1.address))
        monkeypatch.undo()


def test_a_hung_node_is_unavailable_after_one_rpc_timeout_not_five() -> None:
    """A node that takes the connection and never answers (stopped, stuck): the request that
    timed out is not sent again (web3 would, five times), so a caller hears NodeUnavailable after
    rpc_timeout, and the API's 503 comes before an HTTP client gives up on it."""
    with silent_node() as url:
        started = time.monotonic()
        with pytest.raises(errors.NodeUnavailable):
            connect(Settings(rpc_url=url, rpc_timeout=1.0))
        waited = time.monotonic() - started
    assert 1.0 <= waited < 3.0, waited  # five tries took at least 5 s


@pytest.mark.parametrize(
    "error",
    [
        {"code": -32000, "message": "insufficient funds for gas * price + value"},
        {"code": -32003, "message": "Out of gas: gas required exceeds allowance: 0"},  # anvil, no ether
    ],
)
def test_a_nodes_answer_about_the_transaction_stays_a_refusal(
    world: World, monkeypatch: pytest.MonkeyPatch, error: dict[str, Any]
) -> None:
    s1 = world.cast.supplier1
    fn = world.ledger.contract.functions.withdraw()
    with failing_node((200, error)) as url:
        monkeypatch.setattr(world.chain.w3, "provider", HTTPProvider(url))
        monkeypatch.setattr(world.chain, "embedded", False)
        with pytest.raises(errors.TransactionRejected, match=error["message"][:20]):
            Transactor(world.chain, world.system.decoder).estimate(s1.address, fn)
        monkeypatch.undo()


def test_a_revert_mined_on_chain_says_where_and_at_what_cost(world: World) -> None:
    """Sent without a simulation (gas given), a transfer of someone else's certificate is mined and
    reverts: the typed error is still the contract's, and `mined` tells it apart from a refusal."""
    s1, s2 = world.cast.supplier1, world.cast.supplier2
    _, root = world.certificate_for()
    fn = world.ledger.contract.get_function_by_signature("transferFrom(address,address,uint256)")(
        s1.address, s2.address, root
    )
    nonce = world.chain.w3.eth.get_transaction_count(s2.address)
    with pytest.raises(errors.ContractReverted) as info:
        Transactor(world.chain, world.system.decoder).send(s2, fn, gas=200_000)
    error = info.value
    assert isinstance(error, errors.ContractError) and error.error_name in (
        "NotApprovedOrHolder",
        "IncorrectHolder",
    )
    assert error.mined is not None
    receipt = world.chain.w3.eth.get_transaction_receipt(HexBytes(error.mined.tx_hash))
    assert receipt["status"] == 0
    assert (error.mined.block_number, error.mined.gas_used) == (receipt["blockNumber"], receipt["gasUsed"])
    assert world.chain.w3.eth.get_transaction_count(s2.address) == nonce + 1
    on_chain = errors.RevertedOnChain.of(error)
    assert on_chain.error is error and on_chain.tx_hash == error.mined.tx_hash
    assert "mined" in str(on_chain) and error.error_name in str(on_chain)
    # A simulation's revert was not mined.
    with pytest.raises(errors.ContractReverted) as simulated:
        Transactor(world.chain, world.system.decoder).send(s2, fn)
    assert simulated.value.mined is None
    with pytest.raises(ValueError):
        errors.RevertedOnChain.of(simulated.value)


def test_decode_raw_reads_the_access_list() -> None:
    account = Account.create()
    base: dict[str, Any] = {"to": "0x" + "11" * 20, "data": "0x", "nonce": 0, "gas": 50_000, "chainId": 7}
    entries = [{"address": "0x" + "22" * 20, "storageKeys": ["0x" + "00" * 31 + "01"]}]
    for extra in (
        {"gasPrice": 10, "accessList": entries},
        {"maxFeePerGas": 10, "maxPriorityFeePerGas": 1, "accessList": entries},
    ):
        tx = decode_raw(account.sign_transaction({**base, **extra}).raw_transaction)
        assert tx.access_list == (
            {
                "address": "0x2222222222222222222222222222222222222222",
                "storageKeys": ["0x" + "00" * 31 + "01"],
            },
        )
    assert decode_raw(account.sign_transaction({**base, "gasPrice": 10}).raw_transaction).access_list == ()


@pytest.mark.parametrize(
    "fees",
    [
        {"maxFeePerGas": 3 * 10**9, "maxPriorityFeePerGas": 10**9, "chainId": 31337},
        {"gasPrice": 2 * 10**9, "chainId": 31337},  # legacy, EIP-155
        {"gasPrice": 0},  # legacy without a chain id, as some zero-fee networks take
    ],
    ids=["eip1559", "legacy", "legacy-no-chain-id"],
)
def test_unsigned_gives_back_the_fields_that_sign_to_the_same_bytes(fees: dict[str, int]) -> None:
    """A repriced transaction is signed from these fields: anything lost here would change more
    than its fee."""
    account = Account.from_key(keccak(text="unsigned"))
    call = {"to": "0x" + "11" * 20, "value": 0, "gas": 90_000, "nonce": 7, "data": b"\x01\x02\x03"}
    raw = bytes(account.sign_transaction({**call, **fees}).raw_transaction)
    prepared = PreparedTx.from_raw(raw)
    assert prepared.sender == account.address and prepared.nonce == 7
    fields = prepared.unsigned()
    assert not {"v", "r", "s"} & set(fields)
    assert bytes(account.sign_transaction(fields).raw_transaction) == raw


def test_a_send_whose_price_check_fails_waits_on_and_names_every_hash_it_sent(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A node never mining it: the first look at the fees fails (the check is optional, the wait
    goes on), the next finds it priced out and replaces it, and the timeout names both hashes."""
    tx = world.system.tx
    settings = world.chain.settings.model_copy(
        update={"receipt_timeout": 0.4, "reprice_interval": 0.05, "poll_interval": 0.01}
    )
    monkeypatch.setattr(world.chain, "settings", settings)
    sent: list[str] = []
    looks = iter([errors.NodeUnavailable("http://node", "timeout")])

    def repriced(account: Any, prepared: PreparedTx) -> PreparedTx | None:
        failure = next(looks, None)
        if failure is not None:
            raise failure
        if len(sent) > 1:
            return None
        return PreparedTx("0x" + "ab" * 32, b"replacement", prepared.sender, prepared.nonce)

    monkeypatch.setattr(tx, "broadcast", lambda prepared: sent.append(prepared.tx_hash))
    monkeypatch.setattr(tx, "receipt", lambda tx_hash, timeout=0.0: None)
    monkeypatch.setattr(tx, "repriced", repriced)
    with pytest.raises(errors.TransactionTimeout) as info:
        world.token.mint(world.cast.admin, world.cast.supplier1.address, 1)
    assert sent[1:] == ["0x" + "ab" * 32] and info.value.tx_hash == sent[1]
    assert info.value.replaced == (sent[0],) and sent[0] in str(info.value)
    assert "could not check whether" in caplog.text
