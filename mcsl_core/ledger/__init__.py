"""The consortium ledger: identities, signed transactions, blocks, contracts, persistence.

SPEC.md sections 1, 3 and 4; paper IV-A and IV-C steps (3)-(6), footnotes 1-2.
What is recorded, who may write it, and how anyone checks it:

- :class:`Identity` (Ed25519 keys; roles ``node``, ``edge_server``, ``requestor``);
- transaction payloads with canonical versioned encodings, signed into :class:`SignedTx`;
- :class:`Block` with Merkle root and a quorum commit certificate (``ceil((n + f + 1) / 2)`` signatures);
- :class:`Consortium` builds genesis and certified blocks from the elected leader
  (:func:`elect_leader`);
- :class:`Ledger` validates every rule on append (a :class:`LedgerError` subclass
  names the failed rule), persists in SQLite and re-verifies on open;
- :class:`ModelStore`, the content-addressed off-chain model store;
- contracts: :func:`recruit_workers`, :func:`choose_initial_model`, :func:`settle_task`;
- :func:`verify_update_round`: a round of signed updates checked on every core.
"""

from mcsl_core.ledger._block import ZERO_HASH, Block, BlockHeader, CommitSignature, commit_digest, merkle_root
from mcsl_core.ledger._chain import Ledger, VerifyReport, verify_file
from mcsl_core.ledger._consortium import Consortium
from mcsl_core.ledger._contracts import (
    SettlementInputs,
    choose_initial_model,
    recruit_for_task,
    settle_task,
    settlement_inputs,
)
from mcsl_core.ledger._election import elect_leader, max_faulty, quorum_size
from mcsl_core.ledger._errors import (
    BadCertificate,
    BadEncoding,
    BadHeight,
    BadMerkleRoot,
    BadPrevHash,
    BadSignature,
    BadTimestamp,
    ContractMismatch,
    GenesisError,
    LedgerError,
    MembershipError,
    QuorumNotReached,
    ReplayedTransaction,
    RoundOutOfOrder,
    SignerMismatch,
    StoreIntegrityError,
    TaskStateError,
    UnregisteredKey,
    WrongProposer,
    WrongRole,
)
from mcsl_core.ledger._keys import ROLES, Identity, Member
from mcsl_core.ledger._recruit import RECRUITMENT_RULE, Recruitment, recruit_workers
from mcsl_core.ledger._state import TaskInfo, TxRecord
from mcsl_core.ledger._store import ModelStore, decode_tree, encode_tree, tree_address
from mcsl_core.ledger._tx import (
    AggregatedModel,
    Allocation,
    Bid,
    DataSubmissionPayment,
    MembershipRegistration,
    ModelUpdate,
    PaymentRecord,
    ResultBinding,
    SignedTx,
    TaskPublication,
    Transaction,
    WorkerRecruitment,
    decode_tx,
)
from mcsl_core.ledger._verify import RoundCheck, verify_update_round

__all__ = [
    # identities
    "ROLES", "Identity", "Member",
    # transactions
    "Transaction", "SignedTx", "decode_tx", "Bid", "Allocation",
    "MembershipRegistration", "TaskPublication", "WorkerRecruitment", "DataSubmissionPayment",
    "ModelUpdate", "AggregatedModel", "ResultBinding", "PaymentRecord",
    # blocks, election, consortium
    "Block", "BlockHeader", "CommitSignature", "merkle_root", "commit_digest", "ZERO_HASH",
    "elect_leader", "max_faulty", "quorum_size", "Consortium",
    # ledger
    "Ledger", "VerifyReport", "verify_file", "TaskInfo", "TxRecord",
    # errors
    "LedgerError", "BadEncoding", "BadHeight", "BadPrevHash", "BadTimestamp", "WrongProposer",
    "BadMerkleRoot", "BadCertificate", "QuorumNotReached", "BadSignature", "UnregisteredKey",
    "WrongRole", "SignerMismatch", "ReplayedTransaction", "RoundOutOfOrder", "TaskStateError",
    "ContractMismatch", "GenesisError", "MembershipError", "StoreIntegrityError",
    # store
    "ModelStore", "encode_tree", "decode_tree", "tree_address",
    # contracts
    "recruit_workers", "Recruitment", "RECRUITMENT_RULE", "recruit_for_task", "choose_initial_model",
    "settle_task", "settlement_inputs", "SettlementInputs",
    # round verification
    "verify_update_round", "RoundCheck",
]
