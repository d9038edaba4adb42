"""The jobs of queued webhook deliveries: download the release's image asset
and deploy it through the same intake as `POST /v1/ota/group`.

A delivery is answered 202 once it is recorded; a replica then claims it here
with a lease it renews while the job runs. A replica that dies mid-job leaves
the lease to lapse, and the job runs again (at most MAX_ATTEMPTS claims): a
restart never loses an accepted delivery, and the intake's own rules (the same
version with the same bytes changes nothing) keep a second run harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING, TypeVar

from sqlmodel import Session

from otaship.github_deployments import deployment_request, environment_for
from otaship.receiver.db.engine import database_unavailable
from otaship.receiver.db.models import GithubBinding, GithubDelivery, Group, User
from otaship.receiver.github.api import AssetTooLarge, GithubApi, GithubError
from otaship.receiver.github.deliveries import (
    MAX_ATTEMPTS,
    Outcome,
    claim_job,
    finish_job,
    renew_claim,
)
from otaship.receiver.github.release import NoImage, Release, image_asset, version_of_tag
from otaship.receiver.github.reports import claim_change, pending_reports, post_status
from otaship.receiver.github.sealed import SealError, unseal
from otaship.receiver.ids import utcnow
from otaship.receiver.intake.multipart import Upload
from otaship.receiver.intake.spool_files import SpoolFile
from otaship.receiver.logs import short_error
from otaship.receiver.outage import OutageLog
from otaship.receiver.services import Services
from otaship.receiver.wakeup import sleep_until_woken

if TYPE_CHECKING:
    from otaship.receiver.metrics import Metrics

log = logging.getLogger("otaship.github")
T = TypeVar("T")

IDLE_INTERVAL = 2.0
_COMMIT_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


@dataclass(frozen=True)
class JobResult:
    outcome: Outcome
    reason: str
    version: str | None = None
    commit: str | None = None
    rollout_id: str | None = None
    github_deployment_id: int | None = None


class GithubJobs:
    def __init__(self, services: Services, *, metrics: Metrics | None = None) -> None:
        self.services = services
        self.metrics = metrics
        self._wake = asyncio.Event()
        self._outage = OutageLog(log, "webhook deliveries wait in their table")
        # Seconds between an asset request's retries; tests shorten it.
        self.backoff = 1.0

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                ran = await self.run_one()
                self._outage.recovered()
            except Exception as exc:
                if database_unavailable(exc):
                    self._outage.failed(exc)
                else:
                    log.exception("a webhook delivery's job failed; trying again")
                ran = False
            if not ran:
                try:
                    await self.report_changes()
                except Exception as exc:
                    if not database_unavailable(exc):
                        log.exception("reporting deployments to GitHub failed; trying again")
                await sleep_until_woken(self._wake, IDLE_INTERVAL)

    @property
    def _lease(self) -> timedelta:
        return timedelta(seconds=self.services.settings.github_job_lease)

    async def run_one(self) -> bool:
        """Claim and run one job; False when none was waiting."""
        job = await self.services.run_write(
            lambda session: claim_job(session=session, now=utcnow(), lease=self._lease)
        )
        if job is None:
            return False
        assert job.id is not None
        job_id = job.id
        if job.attempts > MAX_ATTEMPTS:
            result = JobResult(
                Outcome.FAILED,
                f"gave up after {MAX_ATTEMPTS} attempts: the receiver stopped during each",
            )
        else:
            keeper = asyncio.create_task(self._keep_claim(job_id))
            try:
                result = await self._run(job)
            except Exception as exc:
                log.error("webhook delivery %s failed unexpectedly", job.delivery_id, exc_info=exc)
                result = JobResult(Outcome.FAILED, f"unexpected error: {short_error(exc)}")
            finally:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
        await self.services.run_write(
            lambda session: finish_job(
                session=session,
                job_id=job_id,
                outcome=result.outcome,
                reason=result.reason,
                now=utcnow(),
                version=result.version,
                commit=result.commit,
                rollout_id=result.rollout_id,
                github_deployment_id=result.github_deployment_id,
            )
        )
        outcome_line(job, result)
        return True

    async def report_changes(self) -> None:
        """Post each reported deploy's change of state to its GitHub Deployment."""
        from otaship.receiver.client_urls import receiver_url

        settings = self.services.settings
        for delivery_id in await self.services.run_db(pending_reports):
            change = await self.services.run_write(functools.partial(claim_change, delivery_id=delivery_id))
            if change is None:
                continue
            binding_id, deployment_id, rollout_id, state, description = change
            binding = await self.services.run_db(functools.partial(_binding, binding_id=binding_id))
            if binding is None or binding.token_sealed is None:
                continue
            try:
                token = unseal(settings.secret_key, binding.token_sealed)
            except SealError as exc:
                log.warning("GitHub deployment %s not updated: %s", deployment_id, exc)
                continue
            api = GithubApi(
                settings.github_api_url, token, timeout=settings.github_timeout, backoff=self.backoff
            )
            log_url = f"{receiver_url(settings)}/v1/rollouts/{rollout_id}" if rollout_id else None
            await post_status(api, binding, deployment_id, state, description, log_url)

    async def _keep_claim(self, job_id: int) -> None:
        while True:
            await asyncio.sleep(self._lease.total_seconds() / 3)
            await self.services.run_write(
                lambda session: renew_claim(session=session, job_id=job_id, until=utcnow() + self._lease)
            )

    async def _run(self, job: GithubDelivery) -> JobResult:
        services = self.services
        settings = services.settings

        def read(session: Session) -> tuple[GithubBinding, User, Group] | None:
            binding = session.get(GithubBinding, job.binding_id)
            if binding is None:
                return None
            owner = session.get(User, binding.owner_id)
            group = session.get(Group, binding.group_id)
            if owner is None or group is None:
                return None
            return binding, owner, group

        found = await self.services.run_db(read)
        if found is None:
            return JobResult(Outcome.FAILED, "the binding was removed before its job ran")
        binding, owner, group = found
        assert job.release is not None
        release = Release.from_json(job.release)
        try:
            version = version_of_tag(release.tag)
            asset = image_asset(release.assets, binding.asset_pattern)
        except (ValueError, NoImage) as exc:
            return JobResult(Outcome.REFUSED, str(exc))
        try:
            token = unseal(settings.secret_key, binding.token_sealed) if binding.token_sealed else None
        except SealError as exc:
            return JobResult(Outcome.FAILED, str(exc), version=version)
        api = GithubApi(settings.github_api_url, token, timeout=settings.github_timeout, backoff=self.backoff)
        try:
            commit = (
                release.target_commitish
                if _COMMIT_SHA.fullmatch(release.target_commitish)
                else await api.commit_of(binding.repo, release.tag)
            )
        except GithubError as exc:
            return JobResult(Outcome.FAILED, str(exc), version=version)

        settings.tmp_dir.mkdir(parents=True, exist_ok=True)
        spool = SpoolFile.create(settings.tmp_dir, "github")
        path = spool.path
        upload = Upload(file_path=path, file_name=asset.name, spool=spool)
        try:
            try:
                upload.file_size = await api.download_asset(
                    binding.repo, asset.id, path, max_bytes=settings.max_firmware_bytes
                )
            except AssetTooLarge as exc:
                return JobResult(Outcome.REFUSED, f"{asset.name}: {exc}", version=version, commit=commit)
            except GithubError as exc:
                return JobResult(Outcome.FAILED, str(exc), version=version, commit=commit)
            upload.fields = _form_fields(binding, group, version=version, commit=commit)
            from otaship.receiver.http.management.ota import deploy_upload

            response = await deploy_upload(services, owner, upload, self.metrics)
        finally:
            upload.discard()
        result = _result_of(response.status_code, bytes(response.body), version=version, commit=commit)
        if result.outcome == Outcome.DEPLOYED and binding.report_deployments and token:
            result = replace(
                result,
                github_deployment_id=await _create_deployment(
                    api, binding, group, job, result, version, commit
                ),
            )
        return result


async def _create_deployment(
    api: GithubApi,
    binding: GithubBinding,
    group: Group,
    job: GithubDelivery,
    result: JobResult,
    version: str,
    commit: str,
) -> int | None:
    """The GitHub Deployment its statuses go to (reports.py); None when GitHub refused it.

    Keyed by the delivery: a job run again (its receiver stopped mid-job) finds
    the deployment its earlier run created instead of creating another."""
    request = deployment_request(
        ref=commit,
        environment=environment_for(group.name),
        version=version,
        rollout_id=result.rollout_id,
        key=job.delivery_id,
    )
    try:
        return await api.create_deployment(binding.repo, request, look_first=job.attempts > 1)
    except GithubError as exc:
        # The deploy stands: GitHub only misses its report.
        log.warning(
            "GitHub deployment of %s %s not created: %s",
            binding.repo,
            version,
            exc,
            extra={"event": "github_report_failed", "binding": binding.id},
        )
        return None


def _binding(session: Session, *, binding_id: str) -> GithubBinding | None:
    return session.get(GithubBinding, binding_id)


def _form_fields(binding: GithubBinding, group: Group, *, version: str, commit: str) -> dict[str, str]:
    """What a POST of this release would send: the binding's rollout as the same fields."""
    fields = {"group": group.id, "token": group.token, "version": version, "commit": commit}
    if binding.canary_group_id is not None:
        fields["canary"] = binding.canary_group_id
    if binding.waves is not None:
        fields["waves"] = binding.waves
    return fields


def _result_of(status: int, body: bytes, *, version: str, commit: str) -> JobResult:
    try:
        answer = json.loads(body)
    except ValueError:
        answer = {}
    said = str(answer.get("message", "")) if isinstance(answer, dict) else ""
    if status == 201:
        rollout = answer.get("rollout")
        rollout_id = rollout.get("id") if isinstance(rollout, dict) else None
        reason = (
            said if answer.get("deployed", True) else f"nothing changed: {version} already runs this image"
        )
        return JobResult(Outcome.DEPLOYED, reason, version=version, commit=commit, rollout_id=rollout_id)
    outcome = Outcome.FAILED if status >= 500 else Outcome.REFUSED
    return JobResult(outcome, f"the deploy answered {status}: {said}", version=version, commit=commit)


def outcome_line(job: GithubDelivery, result: JobResult) -> None:
    level = logging.INFO if result.outcome in (Outcome.DEPLOYED,) else logging.WARNING
    log.log(
        level,
        "github delivery %s (%s): %s: %s",
        job.delivery_id,
        job.tag,
        result.outcome,
        result.reason,
        extra={
            "event": "github_delivery_done",
            "delivery": job.delivery_id,
            "binding": job.binding_id,
            "tag": job.tag,
            "outcome": str(result.outcome),
            "reason": result.reason,
            "version": result.version,
            "rollout": result.rollout_id,
        },
    )
