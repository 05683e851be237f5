"""Bootstrap: register with the control server, then deploy each queue's code.

    from agent.bootstrap.deploy import deploy
    from agent.bootstrap.register import register

    registration = await register(config)                 # agent.bootstrap.register
    for parent, spec in registration.deployments.items():
        deployment = await asyncio.to_thread(deploy, spec, config.deployment.dir, config.git)

Local mode (no server) builds the spec from the config instead:
``DeploymentSpec.from_config(config.deployment, queue)``. The protocol, the answer's shape and
the caching are described in ``docs/bootstrap.md``.

The functions are deliberately not re-exported here: ``agent.bootstrap.register`` and
``agent.bootstrap.deploy`` stay the modules, so ``agent.bootstrap.register.register`` works.
"""

from agent.bootstrap.errors import (
    BadResponseError,
    BootstrapError,
    CodePathError,
    DeploymentBusyError,
    DeploymentError,
    GitAuthError,
    GitError,
    GitRefNotFoundError,
    InstallError,
    KeyRejectedError,
    RegistrationError,
    ServerError,
    ServerUnreachableError,
    StepTimeoutError,
    UnexpectedStatusError,
    UnknownQueueError,
    VirtualenvError,
)
from agent.bootstrap.models import (
    Deployment,
    DeploymentSpec,
    QueueRegistration,
    RedisConnection,
    Registration,
)

__all__ = [
    "BadResponseError", "BootstrapError", "CodePathError", "Deployment", "DeploymentBusyError",
    "DeploymentError", "DeploymentSpec", "GitAuthError", "GitError", "GitRefNotFoundError",
    "InstallError", "KeyRejectedError", "QueueRegistration", "RedisConnection", "Registration",
    "RegistrationError", "ServerError", "ServerUnreachableError", "StepTimeoutError",
    "UnexpectedStatusError", "UnknownQueueError", "VirtualenvError",
]
