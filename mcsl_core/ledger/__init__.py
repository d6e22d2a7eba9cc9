"""The consortium ledger: identities, signed transactions, blocks, contracts, persistence.

SPEC.md sections 1, 3 and 4; paper IV-A and IV-C steps (3)-(6), footnotes 1-2.
What is recorded, who may write it, and how anyone checks it:

- :class:`Identity` (Ed25519 keys; roles ``node``, ``edge_server``, ``requestor``);
- transaction payloads with canonical versioned encodings, signed into :class:`SignedTx`;
- :class:`Block` with Merkle root, a quorum commit certificate (``ceil((n + f + 1) / 2)`` signatures)
  and a quorum head anchor (the ledger keeps the newest, so removing top blocks is detected);
- :class:`Consortium` builds genesis and certified blocks from the elected leader
  (:func:`elect_leader`);
- :class:`Ledger` validates every rule on append (a :class:`LedgerError` subclass
  names the failed rule), persists in SQLite and re-verifies on open;
- :class:`ModelStore`, the content-addressed off-chain model store;
- contracts: :func:`recruit_workers`, :func:`choose_initial_model`, :func:`settle_task`,
  :func:`collect_task` (the payment game's installments, :class:`Installment` and
  :class:`ResultRelease`, then :class:`PaymentCollection`);
- :func:`verify_update_round`: a round of signed updates checked on every core.
"""

from mcsl_core.ledger._block import (
    ZERO_HASH,
    Block,
    BlockHeader,
    CommitSignature,
    anchor_digest,
    commit_digest,
    merkle_root,
)
from mcsl_core.ledger._chain import Ledger, VerifyReport, verify_file
from mcsl_core.ledger._consortium import Consortium
from mcsl_core.ledger._contracts import (
    SettlementInputs,
    choose_initial_model,
    collect_task,
    installment_dues,
    recruit_for_task,
    settle_task,
    settlement_inputs,
    split_collected,
)
from mcsl_core.ledger._election import elect_leader, max_faulty, quorum_size
from mcsl_core.ledger._errors import (
    BadAnchor,
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
    StorageError,
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
    Installment,
    MembershipRegistration,
    ModelUpdate,
    PaymentCollection,
    PaymentRecord,
    ResultBinding,
    ResultRelease,
    SignedTx,
    TaskPublication,
    Transaction,
    WorkerRecruitment,
    decode_tx,
)
from mcsl_core.ledger._verify import RoundCheck, verify_update_round

__all__ = [
    "RECRUITMENT_RULE",
    # identities
    "ROLES",
    "ZERO_HASH",
    "AggregatedModel",
    "Allocation",
    "BadAnchor",
    "BadCertificate",
    "BadEncoding",
    "BadHeight",
    "BadMerkleRoot",
    "BadPrevHash",
    "BadSignature",
    "BadTimestamp",
    "Bid",
    # blocks, election, consortium
    "Block",
    "BlockHeader",
    "CommitSignature",
    "Consortium",
    "ContractMismatch",
    "DataSubmissionPayment",
    "GenesisError",
    "Identity",
    # the payment game (installments) and the collection contract
    "Installment",
    # ledger
    "Ledger",
    # errors
    "LedgerError",
    "Member",
    "MembershipError",
    "MembershipRegistration",
    # store
    "ModelStore",
    "ModelUpdate",
    "PaymentCollection",
    "PaymentRecord",
    "QuorumNotReached",
    "Recruitment",
    "ReplayedTransaction",
    "ResultBinding",
    "ResultRelease",
    "RoundCheck",
    "RoundOutOfOrder",
    "SettlementInputs",
    "SignedTx",
    "SignerMismatch",
    "StorageError",
    "StoreIntegrityError",
    "TaskInfo",
    "TaskPublication",
    "TaskStateError",
    # transactions
    "Transaction",
    "TxRecord",
    "UnregisteredKey",
    "VerifyReport",
    "WorkerRecruitment",
    "WrongProposer",
    "WrongRole",
    "anchor_digest",
    "choose_initial_model",
    "collect_task",
    "commit_digest",
    "decode_tree",
    "decode_tx",
    "elect_leader",
    "encode_tree",
    "installment_dues",
    "max_faulty",
    "merkle_root",
    "quorum_size",
    "recruit_for_task",
    # contracts
    "recruit_workers",
    "settle_task",
    "settlement_inputs",
    "split_collected",
    "tree_address",
    "verify_file",
    # round verification
    "verify_update_round",
]
