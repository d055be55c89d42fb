"""The shop's routes, the same as the Flask and Starlette shops'."""

from __future__ import annotations

from django.urls import path

from shop import views

urlpatterns = [
    path("", views.index),
    path("product/<str:pid>", views.product),
    path("cart", views.cart),
    path("checkout", views.checkout),
    path("thank-you", views.thanks),
    path("newsletter", views.newsletter),
]
