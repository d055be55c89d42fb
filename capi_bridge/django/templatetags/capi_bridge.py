"""``{% load capi_bridge %}{% capi_pixel %}``: the snippet, placed by the template.

The middleware then leaves the page alone. It needs ``request`` in the template context
(``django.template.context_processors.request``, on in Django's default project template).
Empty in a fragment fetched by script. ``{% capi_pixel nonce=... %}`` overrides the CSP nonce
read from the request.
"""

from __future__ import annotations

from typing import Any

from django import template
from django.utils.safestring import SafeString, mark_safe

from capi_bridge.django.middleware import csp_nonce, page

register = template.Library()


@register.simple_tag(takes_context=True)
def capi_pixel(context: Any, nonce: str | None = None) -> SafeString:
    request = context.get("request")
    if request is None:
        raise template.TemplateSyntaxError(
            "{% capi_pixel %} needs the request in the template context: add "
            '"django.template.context_processors.request" to the context_processors of '
            "TEMPLATES"
        )
    current = page(request)
    if not current.navigation:
        return mark_safe("")
    return mark_safe(current.render(nonce or csp_nonce(request)))  # render() escapes values
