"""The `Model` resource (modelyard.io/v1alpha1) as typed Python models.

This module is the one source of truth: the CRD schema in ``crds/`` is generated from it
(``modelyard.api.crd``), and ``modelyard validate`` checks specs with it offline. Every field has
a description (it becomes ``kubectl explain`` text). Cross-field rules are CEL expressions in
``RULES`` attached to the class they apply to; they go into the CRD as
``x-kubernetes-validations`` and are evaluated offline with the same text.
"""
from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

from modelyard.uri import USERINFO, redact

GROUP = "modelyard.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "Model"
PLURAL = "models"
SINGULAR = "model"

Format = Literal["auto", "safetensors", "pytorch", "torchscript", "gguf", "onnx"]
Precision = Literal["auto", "float32", "float16", "bfloat16", "fp8", "int8", "int4"]
Engine = Literal["auto", "vllm", "accelerate"]
QUANTIZED = ("fp8", "int8", "int4")

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
URI = r"^(hf://[^/\s]+/[^/\s]+|s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/\S*)?|https?://\S+|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/\S*)?|file://\S+)$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|K|M|G|T|P|E|m)?$"
# A GPU memory size ("80GiB", "24GB", "80Gi") or a resource profile name ("nvidia-a100-80gb").
GPU_MEMORY = r"^([0-9]+(\.[0-9]+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB|Ki|Mi|Gi|Ti)|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_.-]*$"
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
LABEL_KEY = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"


def describe_uri(uri: str | None, uri_from: "UriFrom | None") -> str:
    if uri is not None:
        return redact(uri)
    ref = uri_from.secret_key_ref if uri_from else None
    return f"the URI in Secret {ref.name!r} (key {ref.key!r})" if ref else "no URI"


class _Base(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )
    # CEL rules (rule, message[, fieldPath]) checked on this object; they land in the CRD as
    # x-kubernetes-validations and are evaluated offline by modelyard.api.validate.
    RULES: ClassVar[tuple[tuple[str, ...], ...]] = ()


class SecretRef(_Base):
    """A Secret in the Model's namespace whose keys become environment variables of the step."""

    name: str = Field(
        description="Name of the Secret. Its keys are passed as environment variables "
        "(e.g. HF_TOKEN, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, MODELYARD_HTTP_TOKEN).",
        pattern=DNS_SUBDOMAIN,
        max_length=253,
    )


class SecretKeyRef(_Base):
    """One key of a Secret in the Model's namespace."""

    name: str = Field(description="Name of the Secret.", pattern=DNS_SUBDOMAIN, max_length=253)
    key: str = Field(description="Key in the Secret whose value is used.", pattern=SECRET_KEY, max_length=253)


class UriFrom(_Base):
    """A URI that is itself a credential (a presigned URL), read from a Secret."""

    secret_key_ref: SecretKeyRef = Field(description="The Secret key holding the URI; it reaches the download "
                                         "pod as an environment variable and is never written anywhere.")


# A URI never carries credentials: userinfo goes to a Secret (secretRef), a query string (a presigned
# URL's signature) comes with the whole URI from a Secret (uriFrom). Same rules for source and adapters.
URI_RULES: tuple[tuple[str, ...], ...] = (
    ("has(self.uri) != has(self.uriFrom)", "set exactly one of uri and uriFrom"),
    (f"!has(self.uri) || !self.uri.matches('{USERINFO}')",
     "uri must not carry credentials (user:token@): put them in a Secret and name it in secretRef "
     "(keys HF_TOKEN, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or MODELYARD_HTTP_TOKEN)", ".uri"),
    ("!has(self.uri) || !self.uri.contains('?')",
     "uri must not have a query string (a presigned URL's signature is a credential): put the whole "
     "URI in a Secret and use uriFrom.secretKeyRef", ".uri"),
)


class Source(_Base):
    """Where the weights come from."""

    uri: str | None = Field(
        None,
        description="hf://org/repo, s3://bucket/prefix, http(s)://host/path (a file or a .tar/.tar.gz/.zip), "
        "pvc://claim/path, or file:///path (local mode only). No credentials: use secretRef, or uriFrom "
        "for a presigned URL.",
        pattern=URI,
        max_length=2048,
    )
    uri_from: UriFrom | None = Field(None, description="Read the URI from a Secret (a presigned URL); instead of uri.")
    revision: str | None = Field(
        None,
        description="Branch, tag or commit (hf://). The resolved commit is recorded in status.source.resolvedRevision.",
        max_length=255,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/\-]*$",
    )
    secret_ref: SecretRef | None = Field(None, description="Credentials for the source, from a Secret.")
    include: list[str] = Field(
        default_factory=list,
        description="Glob patterns of files to fetch (all files when empty), e.g. '*.safetensors'.",
        max_length=64,
    )

    RULES: ClassVar[tuple[tuple[str, ...], ...]] = URI_RULES + (
        ("!has(self.revision) || (has(self.uri) && self.uri.startsWith('hf://'))", "revision is only supported for hf:// sources"),
    )

    def described(self) -> str:
        """The source for messages: the URI redacted, or where it comes from."""
        return describe_uri(self.uri, self.uri_from)


class Adapter(_Base):
    """A LoRA adapter served beside the base model under its own name."""

    name: str = Field(
        description="Name the adapter is served under (the `model` field of a request). DNS-1123 label.",
        pattern=DNS_LABEL,
        max_length=63,
    )
    uri: str | None = Field(None, description="Where the adapter comes from; same schemes and rules as source.uri.",
                            pattern=URI, max_length=2048)
    uri_from: UriFrom | None = Field(None, description="Read the URI from a Secret (a presigned URL); instead of uri.")
    revision: str | None = Field(None, description="Branch, tag or commit (hf://).", max_length=255,
                                 pattern=r"^[A-Za-z0-9][A-Za-z0-9._/\-]*$")
    secret_ref: SecretRef | None = Field(None, description="Credentials for the adapter's source.")
    merge: bool = Field(False, description="Merge the adapter into the base weights at convert time instead of serving it separately.")

    RULES: ClassVar[tuple[tuple[str, ...], ...]] = URI_RULES

    def described(self) -> str:
        return describe_uri(self.uri, self.uri_from)


class EnvVar(_Base):
    """An environment variable for the serving container."""

    name: str = Field(description="Variable name.", pattern=ENV_NAME, max_length=255)
    value: str = Field("", description="Variable value. Use a Secret (source.secretRef) for credentials.", max_length=4096)


class Serving(_Base):
    """How the model is served."""

    max_model_len: int | None = Field(
        None, description="Maximum context length (prompt + completion). Default: the largest that fits, capped by the model.",
        ge=16, le=10_000_000,
    )
    port: int = Field(8000, description="Port of the OpenAI-compatible HTTP server.", ge=1024, le=65535)
    args: list[str] = Field(default_factory=list, description="Extra engine arguments, appended after modelyard's own.", max_length=64)
    env: list[EnvVar] = Field(default_factory=list, description="Extra environment variables for the serving container.", max_length=64)


def _number_to_str(value):
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


# A Kubernetes quantity: `cpu: 4` (a number) or `memory: 32Gi` (a string), as in a pod spec.
Quantity = Annotated[str, BeforeValidator(_number_to_str), Field(pattern=QUANTITY, max_length=64),
                     WithJsonSchema({"x-kubernetes-int-or-string": True})]


class Resources(_Base):
    """CPU/memory requests and limits for the serving container (GPUs come from spec.gpus)."""

    requests: dict[str, Quantity] = Field(default_factory=dict, description="Resource requests, e.g. {cpu: '4', memory: 32Gi}.")
    limits: dict[str, Quantity] = Field(default_factory=dict, description="Resource limits, e.g. {memory: 64Gi}.")


class Toleration(_Base):
    """A Kubernetes toleration for the serving pods (e.g. for tainted GPU nodes)."""

    key: str | None = Field(None, description="Taint key the toleration applies to; empty matches all keys with operator Exists.", max_length=316)
    operator: Literal["Exists", "Equal"] = Field("Equal", description="Exists or Equal.")
    value: str | None = Field(None, description="Taint value the toleration matches (operator Equal).", max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(None, description="Taint effect to match; empty matches all.")
    toleration_seconds: int | None = Field(None, description="How long a NoExecute taint is tolerated.", ge=0)


class Cache(_Base):
    """Where downloaded and converted weights live."""

    storage_class_name: str | None = Field(
        None, description="StorageClass of the cache PVC <name>-cache (cluster default when empty).",
        pattern=DNS_SUBDOMAIN, max_length=253,
    )
    size: str = Field("50Gi", description="Size of the cache PVC.", pattern=QUANTITY)
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany"] = Field(
        "ReadWriteOnce", description="Access mode of the cache PVC. Several replicas on different nodes need ReadWriteMany."
    )
    claim_name: str | None = Field(
        None, description="Use this existing (shared) PVC instead of creating <name>-cache.", pattern=DNS_SUBDOMAIN, max_length=253
    )


class Planner(_Base):
    """How the fit check is applied."""

    enforce: bool = Field(True, description="Stop (phase Failed, no weights downloaded) when the plan says the model does not fit.")


class ModelSpec(_Base):
    """The desired state of a served model."""

    source: Source = Field(description="Where the weights come from.")
    format: Format = Field("auto", description="Format of the weights at the source; auto detects it from the files.")
    precision: Precision = Field("auto", description="Precision to serve at; fp8/int8/int4 quantize (convert step or bitsandbytes at load).")
    engine: Engine = Field("auto", description="Serving engine; auto picks from the plan (vllm on GPUs, accelerate otherwise).")
    gpus: int = Field(0, description="GPUs per replica (over all its nodes); 0 serves on CPU. More than one shards the model: tensor parallel within a node, pipeline parallel across nodes when gpus > gpusPerNode.", ge=0, le=64)
    gpu_memory: str | None = Field(
        None, description="Memory of one GPU (e.g. 80GiB) or a resource profile name (e.g. nvidia-a100-80gb); used by the planner.",
        pattern=GPU_MEMORY, max_length=64,
    )
    gpu_resource: str = Field("nvidia.com/gpu", description="Extended resource name that requests GPUs.", pattern=LABEL_KEY, max_length=253)
    adapters: list[Adapter] = Field(default_factory=list, description="LoRA adapters served beside the base model.", max_length=32)
    replicas: int = Field(1, description="Serving replicas.", ge=0, le=100)
    gpus_per_node: int | None = Field(
        None, description="GPUs on each node. gpus above it spread one replica over several nodes (a LeaderWorkerSet: "
        "tensor parallel within a node, pipeline parallel across nodes). Default: the operator's setting (chart value gpusPerNode, 8).",
        ge=1, le=64,
    )
    nodes: int | None = Field(
        None, description="Nodes per replica (LeaderWorkerSet size); gpus is split evenly over them. Default: as few as gpusPerNode allows. "
        "With gpus 0, one vLLM process per node serves a pipeline stage on CPU.",
        ge=1, le=64,
    )
    serving: Serving = Field(default_factory=Serving, description="How the model is served.")
    resources: Resources = Field(default_factory=Resources, description="CPU/memory for the serving container.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the serving pods must match.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Tolerations for the serving pods.", max_length=32)
    cache: Cache = Field(default_factory=Cache, description="Where weights are cached.")
    planner: Planner = Field(default_factory=Planner, description="How the fit check is applied.")

    RULES: ClassVar[tuple[tuple[str, str], ...]] = (
        (
            "!has(self.adapters) || self.adapters.all(a, self.adapters.exists_one(b, b.name == a.name))",
            "adapter names must be unique",
        ),
        (
            "!(self.format == 'onnx' && self.precision in ['fp8', 'int8', 'int4'])",
            "quantized precisions (fp8, int8, int4) cannot be combined with format onnx",
        ),
        (
            "!(self.engine == 'accelerate' && self.precision == 'fp8')",
            "precision fp8 needs engine vllm (or auto); the accelerate engine quantizes only int8/int4",
        ),
        (
            "!(self.engine == 'accelerate' && self.precision in ['int8', 'int4'] && self.gpus == 0)",
            "int8/int4 on the accelerate engine use bitsandbytes and need gpus >= 1",
        ),
        (
            "!(self.gpus == 0 && has(self.gpuMemory))",
            "gpuMemory only applies when gpus >= 1",
        ),
        (
            "!has(self.nodes) || self.gpus % self.nodes == 0",
            "gpus must be a multiple of nodes: each node gets gpus / nodes GPUs",
        ),
        (
            "!(self.engine == 'accelerate' && has(self.nodes) && self.nodes > 1)",
            "nodes > 1 needs engine vllm (or auto); the accelerate engine serves on one node",
        ),
    )


class ModelMeta(_Base):
    """The parts of metadata modelyard reads."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)
    name: str = Field(
        description="Name of the Model; also the name of its Deployment and Service (a DNS-1035 label).",
        pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length=52,
    )
    namespace: str | None = Field(None, description="Namespace.", pattern=DNS_LABEL, max_length=63)
    uid: str | None = Field(None, description="Set by the API server; children's ownerReferences point at it.")
    generation: int | None = Field(None, description="Set by the API server; bumped on every spec change.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations (modelyard.io/retry retries a failed step at once).")


class Model(_Base):
    """A model to deploy: weights, format, precision, engine, GPUs, adapters."""

    api_version: Literal["modelyard.io/v1alpha1"] = Field(description="modelyard.io/v1alpha1")
    kind: Literal["Model"] = Field(description="Model")
    metadata: ModelMeta = Field(description="Standard object metadata.")
    spec: ModelSpec = Field(description="Desired state.")

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace or "default"
