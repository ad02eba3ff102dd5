"""URL routes: the admin and the search endpoint."""

from django.contrib import admin
from django.urls import path

from app import views
from entity_vectors.ops import views as entity_vectors_views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/entity-vectors/search", views.search, name="entity-vectors-search"),
    path("metrics", entity_vectors_views.metrics, name="entity-vectors-metrics"),
]
