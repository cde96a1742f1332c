// Hangar's second-factor pages: WebAuthn through navigator.credentials, nothing else.
// Every request carries the page's CSRF token; the cookie is sent only to this origin.
"use strict";

(function () {
  function status(text, kind) {
    const el = document.getElementById("status");
    el.textContent = text;
    el.className = kind || "";
  }

  function fromB64url(text) {
    const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    const pad = b64.length % 4 ? "=".repeat(4 - (b64.length % 4)) : "";
    const raw = atob(b64 + pad);
    const out = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) {
      out[i] = raw.charCodeAt(i);
    }
    return out.buffer;
  }

  function toB64url(buffer) {
    const bytes = new Uint8Array(buffer);
    let raw = "";
    for (let i = 0; i < bytes.length; i++) {
      raw += String.fromCharCode(bytes[i]);
    }
    return btoa(raw).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  async function post(form, path, body) {
    const csrf = form.querySelector('input[name="csrf"]').value;
    const response = await fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body || {}),
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      throw new Error((data.detail || response.statusText) + (data.hint ? " (" + data.hint + ")" : ""));
    }
    return data;
  }

  function creationOptions(options) {
    const publicKey = Object.assign({}, options);
    publicKey.challenge = fromB64url(options.challenge);
    publicKey.user = Object.assign({}, options.user, { id: fromB64url(options.user.id) });
    publicKey.excludeCredentials = (options.excludeCredentials || []).map((c) =>
      Object.assign({}, c, { id: fromB64url(c.id) })
    );
    return publicKey;
  }

  function requestOptions(options) {
    const publicKey = Object.assign({}, options);
    publicKey.challenge = fromB64url(options.challenge);
    publicKey.allowCredentials = (options.allowCredentials || []).map((c) =>
      Object.assign({}, c, { id: fromB64url(c.id) })
    );
    return publicKey;
  }

  function attestationJSON(credential) {
    const r = credential.response;
    return {
      id: credential.id,
      rawId: toB64url(credential.rawId),
      type: credential.type,
      response: {
        clientDataJSON: toB64url(r.clientDataJSON),
        attestationObject: toB64url(r.attestationObject),
        transports: r.getTransports ? r.getTransports() : [],
      },
      clientExtensionResults: credential.getClientExtensionResults(),
    };
  }

  function assertionJSON(credential) {
    const r = credential.response;
    return {
      id: credential.id,
      rawId: toB64url(credential.rawId),
      type: credential.type,
      response: {
        clientDataJSON: toB64url(r.clientDataJSON),
        authenticatorData: toB64url(r.authenticatorData),
        signature: toB64url(r.signature),
        userHandle: r.userHandle ? toB64url(r.userHandle) : null,
      },
      clientExtensionResults: credential.getClientExtensionResults(),
    };
  }

  async function enrol(event) {
    event.preventDefault();
    const form = event.target;
    const name = document.getElementById("name").value;
    try {
      status("Touch your security key…");
      const started = await post(form, form.dataset.options);
      const credential = await navigator.credentials.create({
        publicKey: creationOptions(started.publicKey),
      });
      const factor = await post(form, form.dataset.verify, {
        challenge_id: started.challenge_id,
        credential: attestationJSON(credential),
        name: name,
      });
      status("Enrolled " + factor.name + " (" + factor.id + "). You can close this page.", "done");
    } catch (err) {
      status("Not enrolled: " + err.message, "error");
    }
  }

  async function challenge(event) {
    event.preventDefault();
    const form = event.target;
    try {
      status("Touch your security key…");
      const started = await post(form, form.dataset.options);
      const credential = await navigator.credentials.get({
        publicKey: requestOptions(started.publicKey),
      });
      if (form.dataset.submit) {
        // The form itself carries the answer: what comes back is a page.
        form.elements.challenge_id.value = started.challenge_id;
        form.elements.credential.value = JSON.stringify(assertionJSON(credential));
        status("Checking…");
        form.submit();
        return;
      }
      const done = await post(form, form.dataset.verify, {
        challenge_id: started.challenge_id,
        credential: assertionJSON(credential),
      });
      status("Verified.", "done");
      if (done.next) {
        window.location.assign(done.next);
      }
    } catch (err) {
      status("Not verified: " + err.message, "error");
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    const enrolForm = document.getElementById("enrol");
    if (enrolForm) {
      enrolForm.addEventListener("submit", enrol);
    }
    const challengeForm = document.getElementById("challenge");
    if (challengeForm) {
      challengeForm.addEventListener("submit", challenge);
    }
  });
})();
